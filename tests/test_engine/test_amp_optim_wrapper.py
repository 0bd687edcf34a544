"""``--amp`` (QVAmpOptimWrapper): bf16 autocast without loss scaling on CPU (mmengine's AmpOptimWrapper asserts a GPU),
mmengine's AmpOptimWrapper unchanged on CUDA; DINO-family detectors train a few steps with it, with autocast active in
the feature path (backbone + neck), and tools/train.py --amp selects it."""
import copy
import math
import os.path as osp
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.model import BaseModel
from mmengine.optim import AmpOptimWrapper, build_optim_wrapper

from mmdet.registry import MODELS

from conftest import REPO, load_module_from_path

sys.path.insert(0, osp.join(REPO, 'tests', 'test_models'))
from cq_dino_shrink import cq_dino_batch, shrink_cq_dino_model  # noqa: E402

CPU_ONLY = not torch.cuda.is_available()


def wrapper_for(model, **kw):
    return build_optim_wrapper(model, dict(type='QVAmpOptimWrapper', optimizer=dict(type='AdamW', lr=1e-4),
                                           clip_grad=dict(max_norm=0.1), **kw))


def record_dtypes(model):
    seen = {}

    def hook(name):
        def fn(module, args, out):
            first = out[-1] if isinstance(out, (tuple, list)) else out
            seen.setdefault(name, set()).add(first.dtype)
        return fn

    model.backbone.register_forward_hook(hook('backbone'))
    model.neck.register_forward_hook(hook('neck'))
    return seen


def train_steps(model, make_batch, wrapper, steps=3):
    before = copy.deepcopy(model.state_dict())
    logs = [model.train_step(make_batch(), wrapper) for _ in range(steps)]
    for log in logs:
        assert all(math.isfinite(float(v)) for v in log.values()), log
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, 'the optimizer stepped'
    return logs


@pytest.mark.skipif(not CPU_ONLY, reason='the CPU path')
def test_cpu_wrapper_is_bf16_autocast_without_scaler():
    model = torch.nn.Linear(4, 2)
    wrapper = wrapper_for(model)
    assert isinstance(wrapper, AmpOptimWrapper) and wrapper.loss_scaler is None
    with wrapper.optim_context(model):
        assert torch.is_autocast_enabled('cpu') and model(torch.randn(3, 4)).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled('cpu')
    state = wrapper.state_dict()
    assert 'loss_scaler' not in state
    state['loss_scaler'] = {'scale': 65536.0}  # a checkpoint written on a GPU
    wrapper.load_state_dict(state)
    with pytest.raises(ValueError, match='bfloat16 only'):
        wrapper_for(model, dtype='float16')


@pytest.mark.skipif(not CPU_ONLY, reason='the CPU path')
def test_cq_dino_trains_with_amp_on_cpu_and_autocasts_its_feature_path():
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'cq_dino', 'v3det_swinb.py'))
    torch.manual_seed(0)
    model = MODELS.build(shrink_cq_dino_model(cfg.model))
    model.init_weights()
    seen = record_dtypes(model)
    logs = train_steps(model, lambda: cq_dino_batch(model), wrapper_for(model))
    assert 'loss_selector' in logs[-1] and 'loss_cls' in logs[-1]
    assert seen == {'backbone': {torch.bfloat16}, 'neck': {torch.bfloat16}}
    # stage 1 (backbone + selector only) too
    cfg1 = Config.fromfile(osp.join(REPO, 'configs', 'cq_dino', 'v3det_stage1_swinb.py'))
    model1 = MODELS.build(shrink_cq_dino_model(cfg1.model))
    seen1 = {}
    model1.backbone.register_forward_hook(lambda m, a, out: seen1.setdefault('c5', out[-1].dtype) and None)
    train_steps(model1, lambda: cq_dino_batch(model1), wrapper_for(model1), steps=2)
    assert seen1 == {'c5': torch.bfloat16}


@pytest.mark.skipif(not CPU_ONLY, reason='the CPU path')
def test_mmdet_dino_trains_with_amp_on_cpu(tmp_path):
    """mmdet's DINO (the Semi-DETR / Sparse Semi-DETR student and teacher): BaseModel.train_step, hence the wrapper's
    autocast, covers the whole forward; none of our DINO-family detectors overrides train_step."""
    from mmdet.testing import demo_mm_inputs

    from queryvision_mm.models.detectors import QVCQDINO, QVSemiDETR, QVSparseSemiDETR
    for cls in (QVCQDINO, QVSemiDETR, QVSparseSemiDETR):
        assert cls.train_step is BaseModel.train_step, cls
    base = tmp_path / 'dino.py'
    base.write_text("_base_ = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'\n")
    m = Config.fromfile(str(base)).model
    m.num_queries = 20
    m.backbone.update(depth=18, init_cfg=None)
    m.neck.in_channels = [128, 256, 512]
    m.encoder.num_layers = 1
    m.decoder.num_layers = 1
    m.dn_cfg.group_cfg = dict(dynamic=True, num_groups=None, num_dn_queries=10)
    torch.manual_seed(0)
    model = MODELS.build(m)
    model.init_weights()
    seen = record_dtypes(model)
    train_steps(model, lambda: demo_mm_inputs(2, [[3, 96, 128]] * 2, num_items=[2, 1], num_classes=80),
                wrapper_for(model), steps=2)
    assert seen == {'backbone': {torch.bfloat16}, 'neck': {torch.bfloat16}}


def test_train_tool_amp_selects_the_wrapper(monkeypatch):
    """Only the --amp block of tools/train.py: the config it hands to the runner."""
    monkeypatch.syspath_prepend(osp.join(REPO, 'tools'))
    train = load_module_from_path('qv_tools_train_amp', osp.join(REPO, 'tools', 'train.py'))
    import queryvision_mm.utils.cli as cli
    captured = {}

    class Stop(Exception):
        pass

    def fake_build_runner(cfg):
        captured['cfg'] = cfg
        raise Stop

    monkeypatch.setattr(cli, 'build_runner', fake_build_runner)
    for config in ('configs/cq_dino/v3det_swinb.py', 'configs/semi_detr/coco_10pct.py'):
        with pytest.raises(Stop):
            train.main([osp.join(REPO, config), '--amp', '--work-dir', '/tmp/qv-amp-unused'])
        ow = captured['cfg'].optim_wrapper
        assert ow.type == 'QVAmpOptimWrapper' and ow.loss_scale == 'dynamic', config
        assert ow.clip_grad.max_norm == 0.1 and 'paramwise_cfg' in ow


@pytest.mark.skipif(CPU_ONLY, reason='needs CUDA')
def test_cuda_wrapper_is_mmengine_amp_and_cq_dino_autocast():
    """On a GPU: QVAmpOptimWrapper = AmpOptimWrapper (fp16 + GradScaler); model.use_autocast (official, plain
    optimizer wrapper) runs backbone + neck in fp16 and hands fp32 features to the transformer."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'cq_dino', 'v3det_swinb.py'))
    torch.manual_seed(0)
    model = MODELS.build(shrink_cq_dino_model(cfg.model)).cuda()
    model.init_weights()
    wrapper = wrapper_for(model)
    assert wrapper.loss_scaler is not None and wrapper.cast_dtype is None
    seen = record_dtypes(model)
    train_steps(model, lambda: cq_dino_batch(model), wrapper, steps=2)
    assert seen == {'backbone': {torch.float16}, 'neck': {torch.float16}}
    # model-level autocast with a plain fp32 wrapper
    plain = build_optim_wrapper(model, dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4)))
    assert model.use_autocast
    feats_dtype = {}
    model.encoder.register_forward_pre_hook(
        lambda m, a, kw: feats_dtype.setdefault('encoder_in', kw['query'].dtype) and None, with_kwargs=True)
    seen.clear()
    train_steps(model, lambda: cq_dino_batch(model), plain, steps=1)
    assert seen == {'backbone': {torch.float16}, 'neck': {torch.float16}}
    assert feats_dtype == {'encoder_in': torch.float32}
