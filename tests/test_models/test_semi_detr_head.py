import copy

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.structures import InstanceData

from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy


@pytest.fixture
def head(demo_cfg):
    cfg = copy.deepcopy(demo_cfg.model.detector.bbox_head)
    cfg.num_pred_layer = 3
    cfg.as_two_stage = True
    cfg.share_pred_layer = False
    h = MODELS.build(cfg)
    h.init_weights()
    return h


def _case(num_q=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cls = torch.randn(2, num_q, 3, generator=gen)
    ctr = torch.rand(2, num_q, 2, generator=gen) * 0.6 + 0.2
    wh = torch.rand(2, num_q, 2, generator=gen) * 0.3 + 0.1
    boxes = torch.cat([ctr, wh], -1)
    gts = [InstanceData(bboxes=torch.tensor([[10., 10., 60., 50.], [40., 30., 90., 100.]]), labels=torch.tensor([0, 2])),
           InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))]
    metas = [dict(img_shape=(120, 100)), dict(img_shape=(110, 100))]
    return cls, boxes, gts, metas


def test_o2m_classification_loss_matches_formula(head):
    head.set_stage(True)
    cls, boxes, gts, metas = _case()
    loss_cls, loss_bbox, loss_iou = head.loss_by_feat_single(cls, boxes, gts, metas)
    # reference: |t - p|^2 * BCE(p, t) summed over all (query, class), divided by sum(t)
    targets = torch.zeros_like(cls)
    total_t = 0.
    for b in range(2):
        labels, quality, _, pos = head._o2m_targets_single(cls[b], boxes[b], gts[b], metas[b])
        targets[b, pos, labels[pos]] = quality[pos]
        total_t += float(quality.sum())
    p = cls.sigmoid()
    ref = ((targets - p).abs().pow(2) * F.binary_cross_entropy_with_logits(cls, targets, reduction='none')).sum()
    ref = ref / max(total_t, 1.0) * head.loss_cls_o2m.loss_weight
    torch.testing.assert_close(loss_cls, ref, rtol=1e-4, atol=1e-5)
    assert loss_bbox > 0 and loss_iou > 0


def test_stage_changes_assignment(head):
    cls, boxes, gts, metas = _case(num_q=30)
    head.set_stage(True)
    labels, quality, _, pos = head._o2m_targets_single(cls[0], boxes[0], gts[0], metas[0])
    assert pos.sum() > 2, 'one-to-many gives several positives per ground truth'
    head.set_stage(False)
    out_o2o = head.loss_by_feat_single(cls, boxes, gts, metas)
    head.set_stage(True)
    out_o2m = head.loss_by_feat_single(cls, boxes, gts, metas)
    assert not torch.isclose(out_o2o[0], out_o2m[0])


def test_empty_gt_is_finite(head):
    cls, boxes, _, metas = _case()
    empty = [InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))] * 2
    for stage in (True, False):
        head.set_stage(stage)
        loss_cls, loss_bbox, loss_iou = head.loss_by_feat_single(cls, boxes, empty, metas)
        assert torch.isfinite(loss_cls) and loss_cls > 0
        assert loss_bbox == 0 and loss_iou == 0


def test_l1_double_count(demo_cfg):
    cfg = copy.deepcopy(demo_cfg.model.detector.bbox_head)
    cfg.update(num_pred_layer=3, as_two_stage=True, share_pred_layer=False)
    on = MODELS.build(cfg)
    cfg.l1_double_count = False
    off = MODELS.build(cfg)
    assert on.loss_bbox.loss_weight == 2 * off.loss_bbox.loss_weight == 10.0


def test_nms_inference_only_in_one_to_many(head):
    # two identical queries: NMS keeps one, top-k keeps both
    cls = torch.full((4, 3), -10.)
    cls[0, 1] = cls[1, 1] = 5.
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 2 + [[0.2, 0.2, 0.1, 0.1]] * 2)
    meta = dict(img_shape=(100, 100), scale_factor=(1., 1.))
    head.test_cfg['max_per_img'] = 6
    head.set_stage(True)
    with_nms = head._predict_by_feat_single(cls, boxes, meta, rescale=True)
    head.set_stage(False)
    topk = head._predict_by_feat_single(cls, boxes, meta, rescale=True)
    assert (with_nms.scores > 0.5).sum() == 1
    assert (topk.scores > 0.5).sum() == 2
    expected = bbox_cxcywh_to_xyxy(boxes[:1]) * 100
    torch.testing.assert_close(with_nms.bboxes[:1], expected)
