"""QVCQDINO built from mmdet's Grounding DINO config (shrunk), with the category-query selector: loss/predict on CPU,
global labels by index, selector loss and recall, text self-attention removed."""
import copy

import pytest
import torch
from mmengine.config import Config

from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs

NUM_CLASSES, K = 10, 5


def tiny_cfg(tmp_path, **selector):
    base = tmp_path / 'gd.py'
    base.write_text("_base_ = 'mmdet::grounding_dino/grounding_dino_r50_scratch_8xb2_1x_coco.py'\n")
    m = Config.fromfile(str(base)).model
    m.type = 'QVCQDINO'
    m.num_queries = 20
    m.backbone.update(depth=18, init_cfg=None, frozen_stages=-1, norm_eval=False)
    m.neck.in_channels = [128, 256, 512]
    m.encoder.num_layers = 1
    m.encoder.num_cp = 0
    m.decoder.num_layers = 1
    m.dn_cfg.group_cfg = dict(dynamic=True, num_groups=None, num_dn_queries=10)
    m.bbox_head.contrastive_cfg.max_text_len = K
    m.bbox_head.num_classes = 256  # DN label embedding indexed by slot position, as in the official configs
    m.test_cfg = dict(max_per_img=15)
    m.language_model = dict(type='QVCategoryQuerySelector', num_classes=NUM_CLASSES, img_in_channels=512,
                            embed_dims=32, kv_dims=16, num_layers=1, num_heads=2, ffn_dims=64, dropout=0.0, topk=K,
                            **selector)
    return m


def batch(model, n=2, labels=((1, 7, 7), (3, ))):
    d = demo_mm_inputs(n, [[3, 128, 160]] * n, num_items=[len(lb) for lb in labels], num_classes=NUM_CLASSES)
    for s, lb in zip(d['data_samples'], labels):
        s.gt_instances.labels = torch.tensor(lb)
    return model.data_preprocessor(d, True)


def test_loss_and_predict(tmp_path):
    torch.manual_seed(0)
    model = MODELS.build(tiny_cfg(tmp_path))
    model.init_weights()
    assert len(model.encoder.text_layers) == 0, 'no text self-attention (CQ-DINO)'
    model.train()
    data = batch(model)
    losses = model.loss(data['inputs'], copy.deepcopy(data['data_samples']))
    assert 'loss_selector' in losses and 'loss_cls' in losses and 'dn_loss_cls' in losses
    assert 0 <= float(losses['selector_recall']) <= 1
    total, _ = model.parse_losses(losses)
    assert torch.isfinite(total)
    total.backward()
    assert model.language_model.category_embed.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model.predict(data['inputs'], copy.deepcopy(data['data_samples']))
    for sample in out:
        pred = sample.pred_instances
        assert len(pred) == 15
        # every label is a global id of a category the selector picked for this image
        assert torch.isin(pred.labels, sample.selected_categories).all()
        assert pred.labels.max() < NUM_CLASSES


def test_forced_gt_categories_get_positive_slots(tmp_path):
    torch.manual_seed(0)
    model = MODELS.build(tiny_cfg(tmp_path, force_gt_in_topk=True))
    model.init_weights()
    model.train()
    data = batch(model)
    losses = model.loss(data['inputs'], copy.deepcopy(data['data_samples']))
    assert float(losses['selector_recall']) == 1.0


def test_topk_must_match_head(tmp_path):
    cfg = tiny_cfg(tmp_path)
    cfg.bbox_head.contrastive_cfg.max_text_len = K + 1
    with pytest.raises(ValueError, match='topk=5 categories but the head expects contrastive_cfg.max_text_len=6'):
        MODELS.build(cfg)


def test_selector_only_stage(tmp_path):
    """Stage 1: only the backbone and the selector train; loss is the selector's; predict returns categories."""
    torch.manual_seed(0)
    cfg = tiny_cfg(tmp_path)
    cfg.selector_only = True
    model = MODELS.build(cfg)
    model.init_weights()
    trainable = {n.split('.')[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {'backbone', 'language_model'}
    model.train()
    data = batch(model)
    losses = model.loss(data['inputs'], copy.deepcopy(data['data_samples']))
    assert set(losses) == {'loss_selector', 'selector_recall'}
    losses['loss_selector'].backward()
    assert model.backbone.conv1.weight.grad is not None and model.language_model.scorer.weight.grad is not None
    model.eval()
    with torch.no_grad():
        out = model.predict(data['inputs'], copy.deepcopy(data['data_samples']))
        logits = model.language_model(model.backbone(data['inputs'])[-1])['logits']
    for i, s in enumerate(out):
        assert len(s.pred_instances) == 0 and s.selected_categories.shape == (K, )
        assert s.selected_categories.tolist() == logits[i].topk(K).indices.tolist()
        torch.testing.assert_close(s.selector_scores, logits[i].sigmoid().topk(K).values)


def test_same_cleaned_name_categories_stay_distinct(tmp_path):
    """Two categories whose cleaned names collide (V3Det's 45 pairs, e.g. two "star" classes) are separate labels
    end to end: targets go to their own slots and predictions come back under their own ids."""
    torch.manual_seed(0)
    model = MODELS.build(tiny_cfg(tmp_path))
    model.init_weights()
    sel = model.language_model
    a, b = 3, 4  # say "star (five-pointed)" and "star (six-pointed)"
    with torch.no_grad():  # make the selector pick both for every image, b ranked above a
        sel.scorer.weight.zero_()
        sel.scorer.bias.zero_()
    orig = sel.forward

    def rigged(img_feat):
        out = orig(img_feat)
        out['logits'] = out['logits'].clone()
        out['logits'][:, b], out['logits'][:, a] = 10.0, 9.0
        return out

    def rigged_select(img_feat, gt_labels=None):  # the detector's path (chunked scoring + top-K in one call)
        out = rigged(img_feat)
        return dict(sel.select(out['logits'], out['tokens'], gt_labels), logits=out['logits'])

    sel.forward = rigged
    sel.forward_select = rigged_select
    model.train()
    data = batch(model, labels=((a, b), (b, )))
    captured = {}
    plain = model.bbox_head.loss

    def spy(*args, batch_data_samples, **kw):
        captured['samples'] = batch_data_samples
        return plain(*args, batch_data_samples=batch_data_samples, **kw)

    model.bbox_head.loss = spy
    model.loss(data['inputs'], copy.deepcopy(data['data_samples']))
    gt0 = captured['samples'][0].gt_instances
    assert gt0.positive_maps.argmax(1).tolist() == [1, 0], 'a -> slot 1, b -> slot 0 (different slots)'
    model.eval()
    with torch.no_grad():
        out = model.predict(data['inputs'], copy.deepcopy(data['data_samples']))
    assert out[0].selected_categories[:2].tolist() == [b, a]
    labels = set(out[0].pred_instances.labels.tolist())
    assert labels <= set(out[0].selected_categories.tolist())


@pytest.mark.parametrize('force', [False, True])
def test_loss_leaves_callers_gt_instances_unchanged(tmp_path, force):
    """``loss`` works on copies of the ground truth: the caller's data samples keep their global labels and get no
    ``positive_maps`` / ``text_token_mask`` (a shallow ``clone`` used to share ``gt_instances`` with the caller, so
    the labels were overwritten with slot indices, and a second ``loss`` on the same samples trained wrong targets)."""
    torch.manual_seed(0)
    model = MODELS.build(tiny_cfg(tmp_path, force_gt_in_topk=force))
    model.init_weights()
    model.train()
    data = batch(model, labels=((1, 7, 7), (3, )))
    samples = data['data_samples']
    before = [s.gt_instances.labels.clone() for s in samples]
    boxes = [s.gt_instances.bboxes.clone() for s in samples]
    model.loss(data['inputs'], samples)
    for s, lb, bx in zip(samples, before, boxes):
        assert torch.equal(s.gt_instances.labels, lb), 'global labels of the caller overwritten'
        assert torch.equal(s.gt_instances.bboxes, bx)
        assert 'positive_maps' not in s.gt_instances and 'text_token_mask' not in s.gt_instances
    # a second call on the same samples sees the same (global) targets
    first = model.loss(data['inputs'], samples)['selector_recall']
    assert float(first) == float(model.loss(data['inputs'], samples)['selector_recall'])
