"""Duplicate-prediction rate of a detector (the "fewer duplicates" claim of NMS-free DETR training)."""
from typing import Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger

from mmdet.registry import METRICS

from ...models.task_modules.pseudo_label_filter import duplicate_mask


@METRICS.register_module()
class QVDuplicateRateMetric(BaseMetric):
    """Duplicate predictions per image: same-class boxes with IoU > ``iou_thr``, both scored >= ``score_thr``.

    A prediction counts as a duplicate when a higher-scored prediction of the same class overlaps it with
    IoU > ``iou_thr`` (pairwise, not greedy NMS; equal scores are ordered by index). Ground truth is not used.
    Reported (with the ``dup`` prefix):

    * ``rate``: duplicates / predictions (both above ``score_thr``), over the whole dataset;
    * ``per_img``: mean number of duplicates per image;
    * ``preds_per_img``: mean number of predictions above ``score_thr`` per image;
    * ``imgs_with_dup``: fraction of images with at least one duplicate.

    Use next to ``CocoMetric`` (``val_evaluator = [dict(type='CocoMetric', ...), dict(type='QVDuplicateRateMetric')]``).

    Args:
        score_thr (float): Predictions below are ignored. Defaults to 0.3.
        iou_thr (float): IoU above which two same-class predictions are duplicates. Defaults to 0.7.
    """
    default_prefix: Optional[str] = 'dup'

    def __init__(self, score_thr: float = 0.3, iou_thr: float = 0.7, collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.score_thr = float(score_thr)
        self.iou_thr = float(iou_thr)

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            pred = sample['pred_instances']
            scores = torch.as_tensor(pred['scores'])
            keep = scores >= self.score_thr
            if keep.sum() == 0:
                self.results.append((0, 0))
                continue
            dup = duplicate_mask(torch.as_tensor(pred['bboxes'])[keep].float(), scores[keep],
                                 torch.as_tensor(pred['labels'])[keep], self.iou_thr)
            self.results.append((int(keep.sum()), int(dup.sum())))

    def compute_metrics(self, results: list) -> dict:
        logger = MMLogger.get_current_instance()
        if not results:
            raise ValueError('QVDuplicateRateMetric: no predictions were processed (empty dataset?)')
        arr = np.asarray(results, dtype=np.float64)
        preds, dups = arr[:, 0], arr[:, 1]
        out = dict(
            rate=float(dups.sum() / preds.sum()) if preds.sum() > 0 else 0.0,
            per_img=float(dups.mean()),
            preds_per_img=float(preds.mean()),
            imgs_with_dup=float((dups > 0).mean()))
        logger.info(f'duplicates (score >= {self.score_thr}, same class, IoU > {self.iou_thr}): '
                    f"{out['rate']:.4f} of {int(preds.sum())} predictions, {out['per_img']:.3f} per image")
        return out
