"""``import queryvision_mm`` is the detection plugin only (issue 16, item 5 "Lighter, explicit package").

* a detection config's model builds through mmengine's ``custom_imports`` without our code importing mmpretrain,
  transformers, scikit-image, open_clip or faiss (it builds with them uninstalled), nor the demo-data generators;
* ``queryvision_mm.mmpretrain_plugin`` registers the QKS / MaO modules into mmpretrain's registries;
* ``import queryvision_mm`` does not apply the safe checkpoint-loading shim, ``import queryvision_mm.safe_load`` does;
* every shipped config lists the modules it needs explicitly, and config / package comments cite in-repo documents.

Each check runs in a fresh interpreter: the test session itself has imported everything.
"""
import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
HEAVY = ('mmpretrain', 'transformers', 'skimage', 'open_clip', 'faiss')


def _run(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (repository root on sys.path); it prints one JSON line last."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Installed here, mmengine 0.10.7 and mmdet 3.3 import transformers (mmengine.optim: Adafactor), scikit-image and
# mmpretrain (mmdet.models.data_preprocessors) themselves, each inside ``try: ... except ImportError``. So "not in
# sys.modules" cannot hold in this environment; what must hold is that *our* code never imports them on the detection
# path: a finder records every import of them whose caller is a queryvision_mm file and, with ``block=True``, makes
# them unimportable (a detection-only install, where mmengine / mmdet skip them). The importer is the first frame
# outside importlib, so mmdet importing mmpretrain on our behalf does not count, our own ``import mmpretrain`` does.
TRACER = """
import json, os, sys
HEAVY = {heavy!r}
PKG = os.path.join(os.getcwd(), 'queryvision_mm') + os.sep
ours = []
class HeavyImportTracer:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] not in HEAVY:
            return None
        frame = sys._getframe(1)   # the importing statement: the first frame outside importlib's machinery
        while frame is not None and (frame.f_code.co_filename.startswith('<frozen')
                                     or 'importlib' in frame.f_code.co_filename):
            frame = frame.f_back
        if frame is not None and frame.f_code.co_filename.startswith(PKG):
            ours.append(f'{{name}} <- {{os.path.relpath(frame.f_code.co_filename)}}:{{frame.f_lineno}}')
        if {block!r}:
            raise ImportError(f'{{name}} is not installed (detection-only install)')
        return None
sys.meta_path.insert(0, HeavyImportTracer())
"""


def test_detection_config_builds_without_mmpretrain_stack():
    """The Sparse Semi-DETR demo config's model (EfficientNet-Lite backbone included) builds through mmengine's
    ``custom_imports`` with mmpretrain, transformers, scikit-image, open_clip and faiss unavailable, and the CQ-DINO
    demo config loads; no queryvision_mm file asks for them, and the demo-data generators are not imported."""
    out = _run(TRACER.format(heavy=HEAVY, block=True) + """
from mmengine.config import Config
from mmengine.registry import init_default_scope
cfg = Config.fromfile('configs/sparse_semi_detr/demo_shapes.py')   # runs custom_imports (mmengine's path)
init_default_scope('mmdet')
from mmdet.registry import MODELS
cfg.model.detector.backbone.init_cfg = None   # the architecture, not the weights
model = MODELS.build(cfg.model)
Config.fromfile('configs/cq_dino/demo_v3det.py')
print(json.dumps(dict(ours=ours, loaded=[m for m in HEAVY if m in sys.modules],
                      testing=sorted(m for m in sys.modules if m.startswith('queryvision_mm.testing')),
                      imports=list(cfg.custom_imports.imports), model=type(model).__name__,
                      backbone=type(model.student.backbone).__name__)))
""")
    assert out['ours'] == [], f'queryvision_mm imports {out["ours"]} on the detection path'
    assert out['loaded'] == []
    assert out['testing'] == []
    assert out['imports'] == ['queryvision_mm', 'queryvision_mm.safe_load']
    assert (out['model'], out['backbone']) == ('QVSparseSemiDETR', 'QVEfficientNetLite')


def test_plain_import_is_light_and_lazy_names_resolve():
    """With everything installed: ``import queryvision_mm`` asks for none of them (open_clip and faiss, which
    mmdet does not import, stay out of sys.modules) and the QKS / MaO names still resolve on demand."""
    out = _run(TRACER.format(heavy=HEAVY, block=False) + """
import queryvision_mm
ours_at_import = list(ours)
loaded = [m for m in ('open_clip', 'faiss') if m in sys.modules]
from queryvision_mm.models import QVQKSClassifier   # PEP 562: imported on demand
from queryvision_mm.apis import QVDetInferencer
print(json.dumps(dict(ours=ours_at_import, loaded=loaded, qks=QVQKSClassifier.__module__,
                      det=QVDetInferencer.__name__)))
""")
    assert out['ours'] == [] and out['loaded'] == []
    assert out['qks'] == 'queryvision_mm.models.classifiers.qks'
    assert out['det'] == 'QVDetInferencer'


def test_mmpretrain_plugin_registers_qks_and_mao():
    names = dict(MODELS=['QVQKSClassifier', 'QVQKSHead', 'QVCLIPZeroShotHead', 'QVQFormerNeck', 'QVCLIPVisionTokens',
                         'QVMaODescriber', 'QVMaORetriever', 'QVMaOContrastiveModel', 'QVEfficientNetLite',
                         'QVAsymmetricLoss'],
                 DATASETS=['QVZSLMultiLabelDataset', 'QVSoIRDataset', 'QVSoIRPairDataset', 'QVSoIRRetrievalDataset'],
                 METRICS=['QVZSLMultiLabelMetric', 'QVSmallObjectRetrievalMetric', 'QVRankedRetrievalMetric'],
                 HOOKS=['QVZSLConsistencyHook', 'QVSaveLoRAAdapterHook'])
    out = _run(f"""
import json
import queryvision_mm
import mmpretrain.registry as reg
names = {names!r}
def found():
    return {{k: [n for n in v if getattr(reg, k).get(n) is not None] for k, v in names.items()}}
before = found()
import queryvision_mm.mmpretrain_plugin
from queryvision_mm.models import QVQKSClassifier
print(json.dumps(dict(before=before, after=found(), same=reg.MODELS.get('QVQKSClassifier') is QVQKSClassifier)))
""")
    assert all(v == [] for v in out['before'].values()), out['before']
    assert out['after'] == names
    assert out['same']


def test_safe_loading_shim_is_explicit():
    out = _run("""
import json, torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader
def state():
    return (CheckpointLoader._schemes[''].__name__, HistoryBuffer.__getstate__.__module__.startswith('queryvision_mm'),
            HistoryBuffer in torch.serialization.get_safe_globals())
before = state()
import queryvision_mm
after_package = state()
import queryvision_mm.safe_load
print(json.dumps(dict(before=before, after_package=after_package, after_shim=state())))
""")
    assert out['after_package'] == out['before'] == ['load_from_local', False, False]
    assert out['after_shim'] == ['load_from_local_safe', True, True]


def test_shipped_configs_list_their_modules():
    from mmengine.config import Config
    configs = sorted(glob.glob(osp.join(REPO, 'configs', '*', '*.py')))
    configs = [c for c in configs if osp.basename(osp.dirname(c)) != '_base_']
    assert len(configs) > 30
    for path in configs:
        cfg = Config.fromfile(path, import_custom_modules=False)
        imports = cfg.custom_imports.imports
        rel = osp.relpath(path, REPO)
        assert 'queryvision_mm.safe_load' in imports, rel
        if cfg.get('default_scope') == 'mmpretrain':
            assert imports[0] == 'queryvision_mm.mmpretrain_plugin', rel
        else:
            assert imports[0] == 'queryvision_mm', rel


@pytest.mark.parametrize('folder', ['configs', 'queryvision_mm'])
def test_comments_cite_in_repo_documents(folder):
    pattern = re.compile(r'\.\./shared|shared/specs|specs/\w+\.md|review_20\d\d|offline_assets|spec §|spec [a-z_]+\.md')
    hits = []
    for path in glob.glob(osp.join(REPO, folder, '**', '*.py'), recursive=True):
        with open(path, encoding='utf-8') as f:
            hits += [f'{osp.relpath(path, REPO)}:{i}' for i, line in enumerate(f, 1) if pattern.search(line)]
    assert hits == []
