"""Group-wise one-to-many assigner of Sparse Semi-DETR's reliable pseudo-label filtering (RPFM)."""
from typing import Optional

import torch
from mmengine.structures import InstanceData

from mmdet.models.task_modules.assigners import AssignResult
from mmdet.registry import TASK_UTILS

from .o2m_assigner import QVO2MAssigner

T_HAT_NORMS = ('box', 'group')


@TASK_UTILS.register_module()
class QVGroupO2MAssigner(QVO2MAssigner):
    r"""``num_groups`` groups of (pseudo) ground truth, each taking its own ``topk`` predictions.

    Sparse Semi-DETR (Sec. 4.2) assigns m groups of pseudo ground truth in the one-to-many stage with top-k
    predictions per group (m = 6, k = 4). Reconstruction used here (the paper's equations are not available):
    group g = 0..m-1 runs :class:`QVO2MAssigner` (task-aligned top-k, max-IoU tie break) over the
    predictions that no earlier group has taken, so every prediction belongs to at most one group and each
    ground truth receives at most ``topk`` positives per group (exactly ``topk`` when enough predictions
    overlap it and no other ground truth claims them).

    Soft targets (``t_hat_norm``): TOOD/Semi-DETR normalise :math:`\hat t = t / \max t \cdot \max \mathrm{IoU}`
    over a ground truth's positives. ``'box'`` (default) takes both maxima over *all* of the box's positives
    (all groups), so one prediction per object gets the object's top target and the other groups' targets
    fall off with their alignment, as Semi-DETR's single top-13 group does; with ``num_groups=1`` it is
    exactly :class:`QVO2MAssigner`. ``'group'`` normalises within each group, so each of the m groups' best
    prediction gets the group's top IoU (up to m confident targets per object).

    The extra property ``assign_groups`` holds the group of each positive (-1 for negatives);
    ``assign_metrics`` is :math:`\hat t` as in the parent.

    Args:
        num_groups (int): m. Defaults to 6.
        topk (int): k, positives per ground truth and group. Defaults to 4.
        t_hat_norm (str): ``'box'`` or ``'group'``, see above. Defaults to 'box'.
        Others: see :class:`QVO2MAssigner`.
    """

    def __init__(self, num_groups: int = 6, topk: int = 4, t_hat_norm: str = 'box', **kwargs) -> None:
        assert num_groups >= 1, f'num_groups must be >= 1, got {num_groups}'
        if t_hat_norm not in T_HAT_NORMS:
            raise ValueError(f'QVGroupO2MAssigner: t_hat_norm must be one of {T_HAT_NORMS}, got {t_hat_norm!r}')
        super().__init__(topk=topk, **kwargs)
        self.num_groups = int(num_groups)
        self.t_hat_norm = t_hat_norm

    def assign(self,
               pred_instances: InstanceData,
               gt_instances: InstanceData,
               img_meta: Optional[dict] = None,
               **kwargs) -> AssignResult:
        num_pred = pred_instances.bboxes.size(0)
        num_gt = gt_instances.bboxes.size(0)
        dev = pred_instances.bboxes.device
        gt_inds = torch.zeros(num_pred, dtype=torch.long, device=dev)
        labels = torch.full((num_pred, ), -1, dtype=torch.long, device=dev)
        overlaps = pred_instances.bboxes.new_zeros((num_pred, ))
        metrics = pred_instances.bboxes.new_zeros((num_pred, ))
        groups = torch.full((num_pred, ), -1, dtype=torch.long, device=dev)
        free = torch.ones(num_pred, dtype=torch.bool, device=dev)
        for g in range(self.num_groups if num_gt > 0 else 0):
            idx = torch.nonzero(free).flatten()
            if idx.numel() == 0:
                break
            res = super().assign(pred_instances[idx], gt_instances, img_meta=img_meta)
            pos = res.gt_inds > 0
            if not pos.any():
                break
            taken = idx[pos]
            gt_inds[taken] = res.gt_inds[pos]
            labels[taken] = res.labels[pos]
            overlaps[taken] = res.max_overlaps[pos]
            metrics[taken] = res.get_extra_property('assign_metrics')[pos]
            groups[taken] = g
            free[taken] = False
        if self.t_hat_norm == 'box' and num_gt > 0:
            metrics = self._normalise_per_box(pred_instances, gt_instances, gt_inds, overlaps, metrics)
        result = AssignResult(num_gt, gt_inds, overlaps, labels=labels)
        result.set_extra_property('assign_metrics', metrics)
        result.set_extra_property('assign_groups', groups)
        return result

    @torch.no_grad()
    def _normalise_per_box(self, pred_instances, gt_instances, gt_inds, overlaps, metrics):
        r""":math:`\hat t = t / \max t \cdot \max \mathrm{IoU}`, both maxima over all groups' positives of a box
        (t and IoU recomputed as in :class:`QVO2MAssigner`: float32, scores clamped at 0)."""
        pos = gt_inds > 0
        if not pos.any():
            return metrics
        j = gt_inds[pos] - 1
        scores = pred_instances.scores.float()[pos, gt_instances.labels[j]].clamp(min=0)
        iou = overlaps[pos].float()
        align = scores.pow(self.alpha) * iou.pow(self.beta)
        num_gt = gt_instances.bboxes.size(0)
        max_align = align.new_zeros(num_gt).scatter_reduce(0, j, align, reduce='amax', include_self=False)
        max_iou = iou.new_zeros(num_gt).scatter_reduce(0, j, iou, reduce='amax', include_self=False)
        metrics = metrics.clone()
        metrics[pos] = align / (max_align[j] + self.eps) * max_iou[j]
        return metrics
