import itertools

import numpy as np
import pytest
import torch
from mmengine.structures import InstanceData

from mmdet.registry import TASK_UTILS
from queryvision_mm.models.task_modules import gmm_cost_threshold, matched_costs


def test_gmm_threshold_separates_bimodal_costs():
    rng = np.random.default_rng(0)
    low = rng.normal(1.0, 0.1, 60)
    high = rng.normal(4.0, 0.3, 40)
    thr = gmm_cost_threshold(np.concatenate([high, low]))
    assert thr is not None
    assert low.min() <= thr <= low.max() + 1e-9
    assert (high > thr).all()
    # the threshold is one of the inputs (the most likely low-cost sample)
    assert np.isclose(np.concatenate([high, low]), thr).any()


def test_gmm_threshold_degenerate_inputs():
    assert gmm_cost_threshold(np.array([])) is None
    assert gmm_cost_threshold(np.array([np.inf])) is None
    # one distinct value: everything is kept (the official fit returns that cost)
    assert gmm_cost_threshold(np.array([2.0])) == 2.0
    assert gmm_cost_threshold(np.array([3.0, 3.0, 3.0])) == 3.0
    assert gmm_cost_threshold(np.array([np.inf, 1.0])) == 1.0


def test_matched_costs_equals_bruteforce_minimum():
    assigner = TASK_UTILS.build(
        dict(type='HungarianAssigner', match_costs=[
            dict(type='FocalLossCost', weight=2.0),
            dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
            dict(type='IoUCost', iou_mode='giou', weight=2.0)
        ]))
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(5, 2, generator=gen) * 50
    pred = InstanceData(scores=torch.randn(5, 3, generator=gen), bboxes=torch.cat([xy, xy + 20], 1))
    gxy = torch.rand(3, 2, generator=gen) * 50
    gt = InstanceData(bboxes=torch.cat([gxy, gxy + 15], 1), labels=torch.tensor([0, 2, 1]))
    meta = dict(img_shape=(80, 80))
    costs = matched_costs(assigner.match_costs, pred, gt, meta)
    full = sum(c(pred_instances=pred, gt_instances=gt, img_meta=meta) for c in assigner.match_costs)
    best = min(sum(full[p[j], j] for j in range(3)) for p in itertools.permutations(range(5), 3))
    assert torch.isclose(costs.sum(), torch.as_tensor(best, dtype=torch.float32), atol=1e-4)
    assert matched_costs(assigner.match_costs, pred, gt[:0], meta).numel() == 0


def test_non_finite_costs_fail_clearly():
    import torch
    from mmengine.structures import InstanceData
    from mmdet.registry import TASK_UTILS
    from queryvision_mm.models.task_modules import matched_costs
    costs = [TASK_UTILS.build(dict(type='FocalLossCost', weight=2.0)),
             TASK_UTILS.build(dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'))]
    pred = InstanceData(scores=torch.full((4, 3), float('nan')), bboxes=torch.rand(4, 4) * 50)
    gt = InstanceData(bboxes=torch.tensor([[1., 1., 20., 20.]]), labels=torch.tensor([0]))
    with pytest.raises(FloatingPointError, match='NaN/Inf entries for image a.jpg'):
        matched_costs(costs, pred, gt, dict(img_shape=(64, 64), img_path='a.jpg'))
