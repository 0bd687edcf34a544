"""Shared fixtures: offline flags, mmdet scope, tiny demo data and shrunk configs built from the real ones."""
import copy
import os
import os.path as osp
import sys

import pytest

for _k, _v in dict(HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', HF_DATASETS_OFFLINE='1',
                   TORCH_HOME='/nonexistent-offline-torch-home', OMP_NUM_THREADS='2').items():
    os.environ.setdefault(_k, _v)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

DEMO_CONFIG = osp.join(REPO, 'configs', 'semi_detr', 'demo_shapes.py')


def load_module_from_path(name, path):
    """Import a file as a module without running its package's ``__init__`` (e.g. tools/ scripts)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _mmdet_scope(request):
    """Every test runs with mmdet's default scope, our detection modules registered and the safe checkpoint-loading
    shim applied explicitly (``import queryvision_mm`` does not apply it); modules that set
    ``DEFAULT_SCOPE = 'mmpretrain'`` (classification / retrieval) get mmpretrain's scope and our QKS / MaO modules
    (``queryvision_mm.mmpretrain_plugin``)."""
    import queryvision_mm  # noqa: F401
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope

    from queryvision_mm.utils.checkpoint import setup_safe_checkpoint_loading
    setup_safe_checkpoint_loading()
    register_all_modules(init_default_scope=False)
    scope = getattr(request.module, 'DEFAULT_SCOPE', 'mmdet')
    if scope == 'mmpretrain':
        import queryvision_mm.mmpretrain_plugin  # noqa: F401
        from mmpretrain.utils import register_all_modules as register_mmpretrain
        register_mmpretrain(init_default_scope=False)
    name = f'qv-test-{os.getpid()}-{id(object())}'
    with DefaultScope.overwrite_default_scope(scope):
        if DefaultScope.get_current_instance() is None:
            DefaultScope.get_instance(name, scope_name=scope)
        yield


@pytest.fixture(scope='session')
def tiny_demo_data(tmp_path_factory):
    """A small copy of the embedded demo data (8 labeled, 16 unlabeled, 6 val images of ~112 px)."""
    from queryvision_mm.testing.demo_data import generate_demo_shapes
    root = tmp_path_factory.mktemp('demo_shapes')
    generate_demo_shapes(str(root), num_labeled=8, num_unlabeled=16, num_val=6, image_size=112, seed=0)
    return str(root)


def shrink_semi_detr_cfg(cfg, data_root=None, num_queries=30, scale=(160, 112), max_iters=4, switch_iter=2,
                         batch_size=5, num_workers=0):
    """Shrink a Semi-DETR config (real config in, same classes out) for CPU tests."""
    cfg = copy.deepcopy(cfg)
    det = cfg.model.detector
    det.num_queries = num_queries
    if det.backbone.type == 'ResNet':
        det.backbone.update(depth=18, init_cfg=None, frozen_stages=-1, norm_eval=True,
                            norm_cfg=dict(type='BN', requires_grad=True))
        det.neck.in_channels = [128, 256, 512]
    else:  # the demo's small pretrained backbone (EfficientNet-Lite0) stays, without loading weights
        det.backbone.init_cfg = None
    det.encoder.num_layers = 1
    det.decoder.num_layers = 2
    det.dn_cfg.group_cfg = dict(dynamic=True, num_groups=None, num_dn_queries=10)
    det.bbox_head.nms_cfg = dict(score_thr=0.01, iou_threshold=0.6, max_per_img=num_queries)
    det.test_cfg = dict(max_per_img=num_queries)
    if cfg.model.get('consistency_cfg') and 'projector' in cfg.model.consistency_cfg:
        cfg.model.consistency_cfg.projector.hidden_dims = 64
    if data_root is not None:
        scales = [scale]

        def fix_pipeline(pipeline):
            for t in pipeline:
                if t['type'] in ('RandomChoiceResize', ):
                    t['scales'] = scales
                if t['type'] == 'Resize':
                    t['scale'] = scale
                for key in ('sup', 'unsup_teacher', 'unsup_student'):
                    if isinstance(t.get(key), list):
                        fix_pipeline(t[key])

        for ds in cfg.train_dataloader.dataset.datasets:
            ds.data_root = data_root
            fix_pipeline(ds.pipeline)
        for loader in (cfg.val_dataloader, cfg.test_dataloader):
            loader.dataset.data_root = data_root
            fix_pipeline(loader.dataset.pipeline)
            loader.num_workers = num_workers
            loader.persistent_workers = False
            loader.batch_size = 2
        for metric in cfg.val_evaluator:
            if metric['type'] == 'CocoMetric':
                metric.ann_file = osp.join(data_root, 'annotations/instances_val.json')
        cfg.test_evaluator = copy.deepcopy(cfg.val_evaluator)
        cfg.train_dataloader.num_workers = num_workers
        cfg.train_dataloader.persistent_workers = False
        cfg.train_dataloader.batch_size = batch_size
        cfg.train_dataloader.sampler.batch_size = batch_size
    cfg.train_cfg.max_iters = max_iters
    cfg.train_cfg.val_interval = max_iters
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=max_iters)]
    for hook in cfg.custom_hooks:
        if hook['type'] == 'QVStageSwitchHook':
            hook['switch_iter'] = switch_iter
    cfg.default_hooks.checkpoint.interval = max_iters
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.visualization = dict(type='DetVisualizationHook', draw=False)
    return cfg


@pytest.fixture
def demo_cfg():
    from mmengine.config import Config
    return Config.fromfile(DEMO_CONFIG)
