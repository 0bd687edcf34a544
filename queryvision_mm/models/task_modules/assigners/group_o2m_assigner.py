"""Group-wise one-to-many assigner of Sparse Semi-DETR's reliable pseudo-label filtering (RPFM)."""
from typing import Optional

import torch
from mmengine.structures import InstanceData

from mmdet.models.task_modules.assigners import AssignResult
from mmdet.registry import TASK_UTILS

from .o2m_assigner import QVO2MAssigner


@TASK_UTILS.register_module()
class QVGroupO2MAssigner(QVO2MAssigner):
    r"""``num_groups`` groups of (pseudo) ground truth, each taking its own ``topk`` predictions.

    Sparse Semi-DETR (Sec. 4.2) assigns m groups of pseudo ground truth in the one-to-many stage with top-k
    predictions per group (m = 6, k = 4). Reconstruction used here (the paper's equations are not available):
    group g = 0..m-1 runs :class:`QVO2MAssigner` (task-aligned top-k, max-IoU tie break, TOOD-style
    :math:`\hat t` normalised within the group) over the predictions that no earlier group has taken, so
    every prediction belongs to at most one group and each ground truth receives at most ``topk`` positives
    per group (exactly ``topk`` when enough predictions overlap it and no other ground truth claims them).

    The extra property ``assign_groups`` holds the group of each positive (-1 for negatives);
    ``assign_metrics`` is :math:`\hat t` as in the parent.

    Args:
        num_groups (int): m. Defaults to 6.
        topk (int): k, positives per ground truth and group. Defaults to 4.
        Others: see :class:`QVO2MAssigner`.
    """

    def __init__(self, num_groups: int = 6, topk: int = 4, **kwargs) -> None:
        assert num_groups >= 1, f'num_groups must be >= 1, got {num_groups}'
        super().__init__(topk=topk, **kwargs)
        self.num_groups = int(num_groups)

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
        result = AssignResult(num_gt, gt_inds, overlaps, labels=labels)
        result.set_extra_property('assign_metrics', metrics)
        result.set_extra_property('assign_groups', groups)
        return result
