import pytest
import torch
from mmengine.structures import InstanceData

from mmdet.structures.bbox import bbox_overlaps
from queryvision_mm.models.task_modules.assigners import QVO2MAssigner


def reference_assign(scores, boxes, gt_boxes, gt_labels, topk, alpha, beta):
    """Plain-Python reference of the official O2M rule."""
    n, g = boxes.size(0), gt_boxes.size(0)
    ious = bbox_overlaps(boxes, gt_boxes)
    t = [[float(scores[i, gt_labels[j]]) ** alpha * float(ious[i, j]) ** beta for j in range(g)] for i in range(n)]
    chosen = {}
    for j in range(g):
        order = sorted(range(n), key=lambda i: -t[i][j])[:topk]
        for i in order:
            if t[i][j] > 0:
                chosen.setdefault(i, []).append(j)
    gt_of = {i: max(js, key=lambda j: float(ious[i, j])) for i, js in chosen.items()}
    inds = [0] * n
    metric = [0.0] * n
    for j in range(g):
        pos = [i for i, jj in gt_of.items() if jj == j]
        if not pos:
            continue
        max_t = max(t[i][j] for i in pos)
        max_iou = max(float(ious[i, j]) for i in pos)
        for i in pos:
            inds[i] = j + 1
            metric[i] = t[i][j] / (max_t + 1e-7) * max_iou  # official epsilon
    return torch.tensor(inds), torch.tensor(metric)


def random_case(seed, n=40, g=5, c=4):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 80
    wh = torch.rand(n, 2, generator=gen) * 40 + 5
    boxes = torch.cat([xy, xy + wh], 1)
    gxy = torch.rand(g, 2, generator=gen) * 80
    gwh = torch.rand(g, 2, generator=gen) * 40 + 5
    gt_boxes = torch.cat([gxy, gxy + gwh], 1)
    gt_labels = torch.randint(0, c, (g, ), generator=gen)
    scores = torch.rand(n, c, generator=gen)
    return scores, boxes, gt_boxes, gt_labels


@pytest.mark.parametrize('seed', range(6))
@pytest.mark.parametrize('topk', [1, 4, 13])
def test_matches_bruteforce_reference(seed, topk):
    scores, boxes, gt_boxes, gt_labels = random_case(seed)
    assigner = QVO2MAssigner(topk=topk, alpha=1.0, beta=6.0)
    res = assigner.assign(InstanceData(scores=scores, bboxes=boxes), InstanceData(bboxes=gt_boxes, labels=gt_labels))
    ref_inds, ref_metric = reference_assign(scores, boxes, gt_boxes, gt_labels, topk, 1.0, 6.0)
    assert torch.equal(res.gt_inds, ref_inds)
    torch.testing.assert_close(res.get_extra_property('assign_metrics'), ref_metric.float(), atol=1e-5, rtol=1e-4)
    pos = res.gt_inds > 0
    assert torch.equal(res.labels[pos], gt_labels[res.gt_inds[pos] - 1])
    assert (res.labels[~pos] == -1).all()
    # at most topk positives per ground truth, every positive assigned to exactly one ground truth
    counts = torch.bincount(res.gt_inds[pos] - 1, minlength=len(gt_boxes))
    assert counts.max() <= topk
    # the best-aligned positive of each GT carries the GT's best IoU as its target
    metric = res.get_extra_property('assign_metrics')
    assert (metric[pos] > 0).all() and (metric[pos] <= 1 + 1e-6).all()


def test_no_gt_and_no_overlap():
    assigner = QVO2MAssigner(topk=13)
    scores = torch.rand(10, 3)
    boxes = torch.tensor([[0., 0., 10., 10.]]).repeat(10, 1)
    empty = assigner.assign(InstanceData(scores=scores, bboxes=boxes),
                            InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long)))
    assert (empty.gt_inds == 0).all() and empty.get_extra_property('assign_metrics').sum() == 0
    far = assigner.assign(InstanceData(scores=scores, bboxes=boxes),
                          InstanceData(bboxes=torch.tensor([[50., 50., 60., 60.]]), labels=torch.tensor([1])))
    assert (far.gt_inds == 0).all(), 'zero alignment must not be positive'


def test_topk_larger_than_predictions():
    scores, boxes, gt_boxes, gt_labels = random_case(0, n=3, g=2)
    res = QVO2MAssigner(topk=13).assign(InstanceData(scores=scores, bboxes=boxes),
                                        InstanceData(bboxes=gt_boxes, labels=gt_labels))
    ref, _ = reference_assign(scores, boxes, gt_boxes, gt_labels, 13, 1.0, 6.0)
    assert torch.equal(res.gt_inds, ref)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_reduced_precision_predictions_under_amp(dtype):
    """Under --amp the head's predictions are bf16/fp16; the assignment runs in float32 on their values
    (before the fix: "Index put requires the source and destination dtypes match")."""
    scores, boxes, gt_boxes, gt_labels = random_case(3)
    scores, boxes = scores.to(dtype), boxes.to(dtype)
    assigner = QVO2MAssigner(topk=13, alpha=1.0, beta=6.0)
    res = assigner.assign(InstanceData(scores=scores, bboxes=boxes), InstanceData(bboxes=gt_boxes, labels=gt_labels))
    ref = assigner.assign(InstanceData(scores=scores.float(), bboxes=boxes.float()),
                          InstanceData(bboxes=gt_boxes, labels=gt_labels))
    assert torch.equal(res.gt_inds, ref.gt_inds)
    assert res.max_overlaps.dtype == torch.float32
    torch.testing.assert_close(res.get_extra_property('assign_metrics'), ref.get_extra_property('assign_metrics'))
