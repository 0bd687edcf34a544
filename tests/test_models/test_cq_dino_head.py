"""CQ-DINO head: the slot -> class score conversion without mmdet's Python loop over the K slots equals mmdet's
``convert_grounding_to_cls_scores`` and ``GroundingDINOHead``'s predictions (issue 17)."""
import copy

import pytest
import torch
from mmengine.config import ConfigDict

from mmdet.models.dense_heads import GroundingDINOHead
from mmdet.models.dense_heads.atss_vlfusion_head import convert_grounding_to_cls_scores
from mmdet.registry import MODELS

from queryvision_mm.models.dense_heads import QVCQDINOHead, slot_scores

K = 7


@pytest.mark.parametrize('kind', ['identity', 'grouped'])
def test_slot_scores_equal_mmdet_loop(kind):
    torch.manual_seed(0)
    probs = torch.rand(1, 30, 12)
    if kind == 'identity':  # CQ-DINO: slot i is class i
        pmap = {i + 1: [i] for i in range(K)}
    else:  # Grounding-DINO style: several tokens per class, unordered keys
        pmap = {2: [3, 4, 5], 1: [0], 3: [7, 9]}
    want = convert_grounding_to_cls_scores(probs, [pmap])
    torch.testing.assert_close(slot_scores(probs, pmap), want)


def _heads():
    cfg = dict(num_classes=256, sync_cls_avg_factor=True, contrastive_cfg=dict(max_text_len=K, log_scale='auto',
                                                                             bias=True),
               loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
               test_cfg=dict(max_per_img=40))
    plain = MODELS.build(dict(type='GroundingDINOHead', **copy.deepcopy(cfg)))
    fast = MODELS.build(dict(type='QVCQDINOHead', **copy.deepcopy(cfg)))
    assert type(plain) is GroundingDINOHead and type(fast) is QVCQDINOHead
    fast.load_state_dict(plain.state_dict(), strict=True)
    return plain, fast


@pytest.mark.parametrize('rescale', [True, False])
def test_head_predictions_equal_grounding_dino_head(rescale):
    plain, fast = _heads()
    torch.manual_seed(1)
    logits = torch.randn(50, K)
    boxes = torch.rand(50, 4) * 0.6 + 0.2
    boxes[0] = torch.tensor([0.99, 0.5, 0.5, 0.3])  # crosses the border: clamped
    meta = dict(img_shape=(120, 160), scale_factor=(0.5, 0.75))
    pmap = {i + 1: [i] for i in range(K)}
    want = plain._predict_by_feat_single(logits, boxes, pmap, meta, rescale)
    got = fast._predict_by_feat_single(logits, boxes, pmap, meta, rescale)
    assert got.labels.tolist() == want.labels.tolist()
    torch.testing.assert_close(got.scores, want.scores)
    torch.testing.assert_close(got.bboxes, want.bboxes)
    none_want = plain._predict_by_feat_single(logits, boxes, None, meta, rescale)
    none_got = fast._predict_by_feat_single(logits, boxes, None, meta, rescale)
    torch.testing.assert_close(none_got.scores, none_want.scores)


def test_detector_uses_the_vectorised_head_by_default(tmp_path):
    from test_cq_dino import tiny_cfg
    cfg = tiny_cfg(tmp_path)
    assert cfg.bbox_head.type == 'GroundingDINOHead'
    assert type(MODELS.build(copy.deepcopy(cfg)).bbox_head) is QVCQDINOHead
    off = MODELS.build(ConfigDict(cfg, vectorised_slot_scores=False))
    assert type(off.bbox_head) is GroundingDINOHead
