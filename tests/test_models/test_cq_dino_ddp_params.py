"""DDP without ``find_unused_parameters``: after one loss + backward of every shipped CQ-DINO config's model (shrunk
widths and depths, same backbone type / out_indices / with_cp / levels), every trainable parameter has a gradient.

Stage 1 (``selector_only``) reads only the backbone's last output, so the output norms Swin adds for the other
``out_indices`` must be frozen (they were trainable without gradients: DDP stopped at iteration 2). Stage 2 uses
every backbone output through the neck, so nothing is unused there and ``find_unused_parameters`` stays unset."""
import copy
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from mmdet.registry import MODELS

from conftest import REPO
from cq_dino_shrink import cq_dino_batch, shrink_cq_dino_model

STAGE1 = ['v3det_stage1_swinb', 'v3det_stage1_swinl', 'v3det_stage1_r50', 'coco_stage1_r50', 'coco_stage1_swinl']
STAGE2 = ['v3det_swinb', 'v3det_swinl', 'v3det_r50', 'coco_r50', 'coco_swinl']


def load(name):
    return Config.fromfile(osp.join(REPO, 'configs', 'cq_dino', f'{name}.py'))


def one_backward(model):
    model.train()
    data = model.data_preprocessor(cq_dino_batch(model), True)
    losses = model.loss(data['inputs'], data['data_samples'])
    total, _ = model.parse_losses(losses)
    total.backward()
    return losses


@pytest.mark.parametrize('name', STAGE1)
def test_stage1_every_trainable_parameter_gets_a_gradient(name):
    cfg = load(name)
    assert cfg.model.selector_only and not cfg.get('model_wrapper_cfg', {}).get('find_unused_parameters')
    torch.manual_seed(0)
    model = MODELS.build(shrink_cq_dino_model(cfg.model))
    model.init_weights()  # DINO's level_embed is uninitialised memory until init_weights (NaN costs at random)
    losses = one_backward(model)
    assert set(losses) == {'loss_selector', 'selector_recall'}
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == [], f'trainable without gradient (DDP would stop at iteration 2): {no_grad}'
    frozen = {n for n, p in model.backbone.named_parameters() if not p.requires_grad}
    bb = cfg.model.backbone
    if bb.type == 'SwinTransformer':  # exactly the output norms of the out_indices the selector does not read
        unused = [i for i in bb.out_indices if i != max(bb.out_indices)]
        assert frozen == {f'norm{i}.{w}' for i in unused for w in ('weight', 'bias')}
        assert model.backbone.get_parameter(f'norm{max(bb.out_indices)}.weight').requires_grad
    else:  # ResNet: only what its own frozen_stages / frozen BN freeze, nothing found unreachable
        assert all(n.startswith(('conv1', 'bn1', 'layer1.')) or '.bn' in n or 'downsample.1' in n for n in frozen)
        assert model.backbone.layer4[-1].conv2.weight.requires_grad
    assert all(p.requires_grad for p in model.language_model.parameters())


def test_stage1_probe_leaves_the_backbone_as_it_was():
    """The reachability probe at construction changes no buffer (BN statistics), leaves no gradient and keeps the
    train/eval mode."""
    cfg = shrink_cq_dino_model(load('v3det_stage1_r50').model)
    cfg.backbone.update(frozen_stages=-1, norm_eval=False, norm_cfg=dict(type='BN', requires_grad=True))
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    before = copy.deepcopy(model.backbone.state_dict())
    model.backbone.train()
    assert model.unreachable_backbone_params() == set()
    assert model.backbone.training
    assert all(p.grad is None for p in model.parameters())
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize('name', STAGE2)
def test_stage2_every_trainable_parameter_gets_a_gradient(name):
    """The decision for stage 2: all Swin outputs (out_indices 1,2,3 / 0,1,2,3) feed the neck, so DDP needs no
    find_unused_parameters (not set in the configs)."""
    cfg = load(name)
    assert not cfg.model.get('selector_only') and not cfg.get('model_wrapper_cfg', {}).get('find_unused_parameters')
    torch.manual_seed(0)
    model = MODELS.build(shrink_cq_dino_model(cfg.model))
    model.init_weights()  # DINO's level_embed is uninitialised memory until init_weights (NaN costs at random)
    losses = one_backward(model)
    assert 'loss_cls' in losses and 'loss_selector' in losses
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
