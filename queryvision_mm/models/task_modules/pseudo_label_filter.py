"""Duplicate detection shared by Sparse Semi-DETR's pseudo-label filter and the duplicate-rate metric."""
import torch
from mmcv.ops import batched_nms
from mmengine.structures import InstanceData
from torch import Tensor

from mmdet.structures.bbox import bbox_overlaps


def duplicate_mask(bboxes: Tensor, scores: Tensor, labels: Tensor, iou_thr: float = 0.7) -> Tensor:
    """``True`` for every box that overlaps a higher-scored box of the same class with IoU > ``iou_thr``.

    Pairwise definition (not greedy NMS): a box is a duplicate whenever such a partner exists, whether or not
    the partner is a duplicate itself. Equal scores are ordered by index (the earlier box counts as higher).
    """
    n = bboxes.size(0)
    if n < 2:
        return torch.zeros(n, dtype=torch.bool, device=bboxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=order.device)
    iou = bbox_overlaps(bboxes, bboxes)
    higher = rank[None, :] < rank[:, None]  # [i, j]: j ranks above i
    same = labels[:, None] == labels[None, :]
    return ((iou > iou_thr) & higher & same).any(dim=1)


def filter_duplicate_pseudo_labels(candidates: InstanceData, score_thr: float, iou_thr: float,
                                   class_agnostic: bool = False) -> InstanceData:
    """Reliable pseudo-labels of the one-to-one stage (Sparse Semi-DETR RPFM, Sec. 4.2; reconstruction).

    Among the candidates with ``score >= score_thr`` (the ones that become pseudo ground truth), a box is
    dropped when a higher-scored box overlaps it with IoU > ``iou_thr`` (greedy, mmcv's ``batched_nms``):
    of the same class (``class_agnostic=False``) or of any class (``class_agnostic=True``: the same object
    predicted under two labels). Candidates below ``score_thr`` are returned unchanged (they only feed the
    mining of consistency queries). The filter only removes boxes, so run after Semi-DETR's NMS its result is
    a subset of Semi-DETR's pseudo-labels. Order of the survivors: the input order.
    """
    confident = candidates.scores >= score_thr
    idx = torch.nonzero(confident).flatten()
    keep = ~confident
    if idx.numel() > 0:
        _, kept = batched_nms(candidates.bboxes[idx], candidates.scores[idx], candidates.labels[idx],
                              dict(type='nms', iou_threshold=iou_thr, class_agnostic=class_agnostic))
        keep[idx[kept]] = True
    return candidates[keep]
