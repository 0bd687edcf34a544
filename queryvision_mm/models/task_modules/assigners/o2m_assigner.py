"""One-to-many (top-k, task-aligned) assigner of Semi-DETR's first training stage."""
from typing import Optional

import torch
from mmengine.structures import InstanceData

from mmdet.models.task_modules.assigners import AssignResult, BaseAssigner
from mmdet.registry import TASK_UTILS
from mmdet.structures.bbox import bbox_overlaps

INF = 1e8


@TASK_UTILS.register_module()
class QVO2MAssigner(BaseAssigner):
    r"""Task-aligned one-to-many assigner for DETR queries (Semi-DETR, CVPR 2023).

    Unlike :class:`mmdet.models.task_modules.TaskAlignedAssigner` there is no anchor prior and no
    centre-in-box constraint: every query is a candidate of every ground truth.

    For prediction :math:`i` and ground truth :math:`j` the alignment is
    :math:`t_{ij} = s_{ij}^{\alpha}\,\mathrm{IoU}_{ij}^{\beta}` with :math:`s_{ij}` the predicted
    probability of :math:`j`'s class. Each ground truth takes its ``topk`` best-aligned predictions
    (with :math:`t > 0`); a prediction chosen by several ground truths goes to the one it overlaps
    most. The soft target of each positive is :math:`\hat t_{ij} = t_{ij} / \max_{i'} t_{i'j}
    \cdot \max_{i'} \mathrm{IoU}_{i'j}` over that ground truth's positives (TOOD-style
    normalisation with ``eps`` added to the maximum), stored as the ``assign_metrics`` extra property of the result.

    Args:
        topk (int): Positives per ground truth. 13 in the official code.
        alpha (float): Exponent of the classification score. Defaults to 1.
        beta (float): Exponent of the IoU. Defaults to 6.
        iou_mode (str): Overlap mode, ``'iou'`` or ``'giou'`` (clamped at 0). Defaults to 'iou'.
        eps (float): Added to the per-GT maximum alignment in the normalisation (official: 1e-7; it
            matters early in training, when ``IoU^6`` makes every alignment tiny).
    """

    def __init__(self, topk: int = 13, alpha: float = 1.0, beta: float = 6.0, iou_mode: str = 'iou',
                 eps: float = 1e-7) -> None:
        assert topk >= 1, f'topk must be >= 1, got {topk}'
        self.eps = eps
        self.topk = int(topk)
        self.alpha = alpha
        self.beta = beta
        self.iou_mode = iou_mode

    def assign(self,
               pred_instances: InstanceData,
               gt_instances: InstanceData,
               img_meta: Optional[dict] = None,
               **kwargs) -> AssignResult:
        r"""Assign ground truths to predictions.

        Args:
            pred_instances (InstanceData): ``scores`` (N, C) class probabilities (after sigmoid) and
                ``bboxes`` (N, 4) in absolute xyxy.
            gt_instances (InstanceData): ``bboxes`` (G, 4) absolute xyxy and ``labels`` (G,).

        Returns:
            AssignResult: ``gt_inds`` (0 = negative, j+1 = ground truth j), ``labels`` (-1 for
            negatives), ``max_overlaps`` (IoU with the assigned ground truth), and the extra property
            ``assign_metrics`` (N,) holding :math:`\hat t` for positives, 0 elsewhere.
        """
        # in float32 whatever the autocast dtype of the predictions (bf16/fp16 under --amp): the IoUs, t and
        # the targets t-hat are compared and written into float32 buffers
        scores = pred_instances.scores.float()
        pred_bboxes = pred_instances.bboxes.float()
        gt_bboxes = gt_instances.bboxes.float()
        gt_labels = gt_instances.labels
        num_pred, num_gt = pred_bboxes.size(0), gt_bboxes.size(0)

        assigned_gt_inds = pred_bboxes.new_zeros((num_pred, ), dtype=torch.long)
        assigned_labels = pred_bboxes.new_full((num_pred, ), -1, dtype=torch.long)
        max_overlaps = pred_bboxes.new_zeros((num_pred, ))
        metrics = pred_bboxes.new_zeros((num_pred, ))
        if num_gt == 0 or num_pred == 0:
            result = AssignResult(num_gt, assigned_gt_inds, max_overlaps, labels=assigned_labels)
            result.set_extra_property('assign_metrics', metrics)
            return result

        with torch.no_grad():
            ious = bbox_overlaps(pred_bboxes, gt_bboxes, mode=self.iou_mode).clamp(min=0)  # (N, G)
            cls_scores = scores[:, gt_labels].clamp(min=0)  # (N, G)
            align = cls_scores.pow(self.alpha) * ious.pow(self.beta)

            k = min(self.topk, num_pred)
            _, cand = align.topk(k, dim=0)  # (k, G)
            is_pos = torch.zeros_like(align, dtype=torch.bool)
            is_pos.scatter_(0, cand, True)
            is_pos &= align > 0

            # a prediction claimed by several ground truths goes to the one with the largest IoU
            ious_pos = torch.where(is_pos, ious, ious.new_full((), -INF))
            best_iou, best_gt = ious_pos.max(dim=1)
            pos_mask = is_pos.any(dim=1)
            keep = torch.zeros_like(is_pos)
            keep[pos_mask, best_gt[pos_mask]] = True

            # TOOD-style normalisation over each ground truth's final positives
            align_kept = torch.where(keep, align, align.new_zeros(()))
            ious_kept = torch.where(keep, ious, ious.new_zeros(()))
            max_align = align_kept.max(dim=0).values  # (G,)
            max_iou = ious_kept.max(dim=0).values
            norm = align_kept / (max_align[None] + self.eps) * max_iou[None]

            assigned_gt_inds[pos_mask] = best_gt[pos_mask] + 1
            assigned_labels[pos_mask] = gt_labels[best_gt[pos_mask]]
            max_overlaps[pos_mask] = best_iou[pos_mask]
            metrics[pos_mask] = norm[pos_mask, best_gt[pos_mask]]

        result = AssignResult(num_gt, assigned_gt_inds, max_overlaps, labels=assigned_labels)
        result.set_extra_property('assign_metrics', metrics)
        return result
