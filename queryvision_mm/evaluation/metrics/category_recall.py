"""Category recall of CQ-DINO's image-guided selector (the paper's "ARC")."""
from collections import defaultdict
from typing import Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger

from mmdet.registry import METRICS


@METRICS.register_module()
class QVCategoryRecallMetric(BaseMetric):
    """How many of an image's ground-truth categories the selector keeps in its top-K (``selected_categories``
    written by :class:`QVCQDINO.predict`, in both training stages). A ground-truth box whose category is not selected
    cannot be classified correctly, so this bounds the detector's recall. Reported (prefix ``selector``):

    * ``recall@K``: per image, selected distinct GT categories / distinct GT categories, averaged over images with
      ground truth;
    * ``category_recall`` (ARC): per category, the fraction of the images containing it in which it was selected,
      averaged over the categories present in the evaluated images;
    * ``all_hit``: fraction of images (with ground truth) whose GT categories are all selected.

    Needs ``gt_instances`` in the test samples (``LoadAnnotations`` in the test pipeline). Images without ground
    truth are counted (``num_empty``) but do not enter the averages.
    """
    default_prefix: Optional[str] = 'selector'

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            if 'selected_categories' not in sample:
                raise KeyError('QVCategoryRecallMetric: the model wrote no "selected_categories" (use QVCQDINO)')
            if 'gt_instances' not in sample or 'labels' not in sample['gt_instances']:
                raise KeyError(f"QVCategoryRecallMetric: no gt_instances.labels for {sample.get('img_path')}: keep "
                               'LoadAnnotations in the test pipeline')
            gt = torch.unique(torch.as_tensor(sample['gt_instances']['labels']).cpu()).tolist()
            sel = set(torch.as_tensor(sample['selected_categories']).cpu().tolist())
            self.results.append((len(sel), [(g, g in sel) for g in gt]))

    def compute_metrics(self, results: list) -> dict:
        if not results:
            raise ValueError('QVCategoryRecallMetric: no samples were processed (empty dataset?)')
        k = results[0][0]
        per_image, all_hit, per_cat = [], [], defaultdict(list)
        for _, pairs in results:
            if not pairs:
                continue
            hits = [h for _, h in pairs]
            per_image.append(np.mean(hits))
            all_hit.append(all(hits))
            for g, h in pairs:
                per_cat[g].append(h)
        num_empty = len(results) - len(per_image)
        if not per_image:
            raise ValueError(f'QVCategoryRecallMetric: none of the {len(results)} images has ground truth')
        out = {
            f'recall@{k}': float(np.mean(per_image)),
            'category_recall': float(np.mean([np.mean(v) for v in per_cat.values()])),
            'all_hit': float(np.mean(all_hit)),
            'num_empty': num_empty,
        }
        MMLogger.get_current_instance().info(
            f"selector recall@{k} {out[f'recall@{k}']:.4f}, category recall (ARC) {out['category_recall']:.4f} over "
            f'{len(per_cat)} categories, all GT categories selected in {out["all_hit"]:.3f} of {len(per_image)} images')
        return out
