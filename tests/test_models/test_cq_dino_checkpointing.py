"""Encoder activation checkpointing for CQ-DINO without fairscale (``model.encoder.num_cp``, official 6): the first
``num_cp`` fusion + deformable layers run through ``torch.utils.checkpoint`` in training, with the same parameter
names, outputs and gradients as without it."""
import copy

import pytest
import torch
from mmengine.config import Config

from mmdet.models.layers.transformer import grounding_dino_layers
from mmdet.registry import MODELS

from cq_dino_shrink import cq_dino_batch, shrink_cq_dino_model
from conftest import REPO
from queryvision_mm.models.layers import activation_checkpoint
from queryvision_mm.models.layers.activation_checkpoint import is_checkpointed


def build(num_cp, num_layers=2, dropout=0.1):
    m = shrink_cq_dino_model(Config.fromfile(f'{REPO}/configs/cq_dino/v3det_swinb.py').model)
    m.encoder.num_layers = num_layers
    m.encoder.num_cp = num_cp
    m.encoder.layer_cfg.self_attn_cfg.dropout = dropout  # random state must be replayed in the recomputation
    m.encoder.layer_cfg.ffn_cfg.ffn_drop = dropout
    torch.manual_seed(0)
    model = MODELS.build(m)
    model.init_weights()  # DINO's level_embed is uninitialised memory until init_weights
    return model


def loss_and_grads(model, data):
    torch.manual_seed(1)
    model.train()
    losses = model.loss(data['inputs'], copy.deepcopy(data['data_samples']))
    total, _ = model.parse_losses(losses)
    total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_checkpointed_encoder_equals_plain_without_fairscale(monkeypatch):
    monkeypatch.setattr(grounding_dino_layers, 'checkpoint_wrapper', None)  # as without fairscale installed
    calls = []
    real = activation_checkpoint.checkpoint
    monkeypatch.setattr(activation_checkpoint, 'checkpoint', lambda *a, **k: calls.append(1) or real(*a, **k))
    plain, ckpt = build(num_cp=0), build(num_cp=2)
    assert ckpt.encoder.num_cp == 2
    assert all(is_checkpointed(m) for m in (*ckpt.encoder.layers, *ckpt.encoder.fusion_layers))
    assert not any(is_checkpointed(m) for m in (*plain.encoder.layers, *plain.encoder.fusion_layers))
    # same names and state-dict keys: checkpoints load across num_cp settings
    assert list(plain.state_dict()) == list(ckpt.state_dict())
    ckpt.load_state_dict(plain.state_dict())
    data = plain.data_preprocessor(cq_dino_batch(plain), True)
    loss_p, grads_p = loss_and_grads(plain, data)
    loss_c, grads_c = loss_and_grads(ckpt, data)
    assert len(calls) == 4, 'two fusion + two deformable layers checkpointed in training'
    torch.testing.assert_close(loss_c, loss_p)
    assert grads_p.keys() == grads_c.keys() and any(k.startswith('encoder.layers.0.') for k in grads_c)
    for k in grads_p:
        torch.testing.assert_close(grads_c[k], grads_p[k], msg=k)
    # inference: no checkpointing
    calls.clear()
    ckpt.eval()
    with torch.no_grad():
        ckpt.predict(data['inputs'], copy.deepcopy(data['data_samples']))
    assert calls == []


def test_partial_num_cp_and_bounds():
    model = build(num_cp=1)
    assert is_checkpointed(model.encoder.layers[0]) and not is_checkpointed(model.encoder.layers[1])
    copied = copy.deepcopy(model)  # e.g. an EMA copy: the checkpointed forward is bound to the copy
    assert copied.encoder.layers[0].forward.__self__ is copied.encoder.layers[0]
    with pytest.raises(ValueError, match='num_cp=3 > encoder.num_layers=2'):
        build(num_cp=3)
