"""Model index (issue 16, item 4): every metafile's configs exist, every shipped paper config is listed,
model-index.yml imports every metafile, paper numbers are marked as such and no weights are claimed; openmim's
`mim search queryvision_mm` lists the models; setup.py exposes the index under queryvision_mm/.mim."""
import glob
import os
import os.path as osp
import subprocess
import sys

import pytest
import yaml

from conftest import REPO


def metafiles():
    return sorted(glob.glob(osp.join(REPO, 'configs', '*', 'metafile.yml')))


def models():
    for path in metafiles():
        for entry in yaml.safe_load(open(path))['Models']:
            yield path, entry


def test_model_index_imports_every_metafile():
    index = yaml.safe_load(open(osp.join(REPO, 'model-index.yml')))
    imported = sorted(osp.join(REPO, p) for p in index['Import'])
    assert imported == metafiles()
    assert {osp.basename(osp.dirname(p)) for p in metafiles()} == {
        'semi_detr', 'sparse_semi_detr', 'cq_dino', 'qks', 'mao'}


def test_configs_exist_and_every_paper_config_is_listed():
    listed = {}
    for path, entry in models():
        cfg = entry['Config']
        assert osp.isfile(osp.join(REPO, cfg)), f'{path}: {cfg} does not exist'
        assert osp.dirname(cfg) == osp.relpath(osp.dirname(path), REPO), f'{cfg} listed in another paper\'s metafile'
        folder, name = osp.basename(osp.dirname(cfg)), osp.splitext(osp.basename(cfg))[0]
        assert entry['Name'] == f'{folder}_{name}', 'Name = "<paper folder>_<config name>" = the default work dir'
        assert entry['Name'] not in listed.values(), entry['Name']
        listed[cfg] = entry['Name']
    shipped = {osp.relpath(p, REPO) for p in glob.glob(osp.join(REPO, 'configs', '*', '*.py'))
               if '_base_' not in p and not osp.basename(p).startswith('demo')}
    missing = shipped - set(listed)
    assert not missing, f'configs without a model-index entry: {sorted(missing)}'


def test_results_are_marked_as_paper_numbers_without_weights():
    with_results = 0
    for path, entry in models():
        assert 'Weights' in entry and entry['Weights'] is None, f'{entry["Name"]}: no weights are released'
        note = entry['Metadata'].get('Paper results')
        assert note, f'{entry["Name"]}: every entry says where its numbers come from'
        if entry.get('Results'):
            with_results += 1
            assert 'not reproduced' in note
            for result in entry['Results']:
                assert result['Metrics'] and all(isinstance(v, (int, float)) for v in result['Metrics'].values())
    assert with_results >= 15
    qks = [e for p, e in models() if e['In Collection'] == 'QKS']
    assert qks and not any(e.get('Results') for e in qks), 'QKS absolute numbers are unverified: left out'


def test_model_index_loads_with_modelindex():
    modelindex = pytest.importorskip('modelindex')
    index = modelindex.load(osp.join(REPO, 'model-index.yml'))
    assert index.check(silent=True) == []
    assert len(index.models) == sum(1 for _ in models())


def test_inferencer_finds_models_by_name():
    from queryvision_mm.apis.inferencers import find_model
    config, weights = find_model('Sparse_Semi_DETR_coco_10pct')
    assert config == osp.join(REPO, 'configs', 'sparse_semi_detr', 'coco_10pct.py') and weights is None
    with pytest.raises(ValueError, match='cq_dino_v3det_swinb'):
        find_model('no_such_model')


def test_mim_search_lists_the_models():
    pytest.importorskip('mim')
    mim_dir = osp.join(REPO, 'queryvision_mm', '.mim')
    assert osp.isfile(osp.join(mim_dir, 'model-index.yml')) and osp.isdir(osp.join(mim_dir, 'configs')), \
        'queryvision_mm/.mim is written by setup.py when the package is installed: re-run tools/setup_env.sh'
    # from the repository root: with a setuptools >= 80 editable install, openmim finds the package's folder
    # through the queryvision_mm.egg-info there (README, "Model index / mim")
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    proc = subprocess.run([sys.executable, '-m', 'mim', 'search', 'queryvision_mm', '--valid-config'], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for _, entry in models():
        assert entry['Name'].lower() in proc.stdout, entry['Name']
    proc = subprocess.run([sys.executable, '-m', 'mim', 'search', 'queryvision_mm', '--model', 'cq-dino'], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'v3det/box_ap' in proc.stdout and '52.3' in proc.stdout and 'semi_detr_coco' not in proc.stdout


def test_setup_mim_extension_symlinks_and_copies(tmp_path):
    """setup.py's add_mim_extension in a scratch copy: links for develop / editable_wheel, copies for wheels."""
    root = tmp_path / 'src'
    (root / 'queryvision_mm').mkdir(parents=True)
    (root / 'configs' / 'x').mkdir(parents=True)
    (root / 'configs' / 'x' / 'a.py').write_text('a = 1\n')
    (root / 'model-index.yml').write_text('Import: []\n')
    (root / 'README.md').write_text('')
    (root / 'requirements').mkdir()
    for name in ('runtime.txt', 'mminstall.txt', 'optional.txt', 'tests.txt'):
        (root / 'requirements' / name).write_text('')
    (root / 'queryvision_mm' / 'version.py').write_text("__version__ = '0'\n")
    setup_py = open(osp.join(REPO, 'setup.py')).read()
    (root / 'setup.py').write_text(setup_py)
    code = ('import os, sys, setuptools; setuptools.setup = lambda **kw: None; sys.argv = ["setup.py", sys.argv[1]]; '
            'exec(compile(open("setup.py").read(), "setup.py", "exec"), '
            'dict(__file__=os.path.abspath("setup.py"), __name__="__main__"))')
    subprocess.run([sys.executable, '-c', code, 'develop'], cwd=root, check=True)
    mim = root / 'queryvision_mm' / '.mim'
    assert osp.islink(mim / 'configs') and osp.isfile(mim / 'configs' / 'x' / 'a.py')
    assert os.readlink(mim / 'model-index.yml') == osp.join('..', '..', 'model-index.yml')
    assert (mim / '.gitignore').read_text().strip().endswith('*')
    for link in ('configs', 'model-index.yml'):
        os.remove(mim / link)
    subprocess.run([sys.executable, '-c', code, 'bdist_wheel'], cwd=root, check=True)
    assert not osp.islink(mim / 'configs') and (mim / 'configs' / 'x' / 'a.py').read_text() == 'a = 1\n'
