"""CQ-DINO's detection head: mmdet's ``GroundingDINOHead`` (paper Sec. 3.3: contrastive classification over the K
selected category tokens) with the slot -> class score conversion done in one tensor operation.

mmdet's ``convert_grounding_to_cls_scores`` loops in Python over the entries of the token positive map (for CQ-DINO:
the K slots, 100 on V3Det), building an index tensor on the CPU for each; here the map becomes one (classes x tokens)
averaging matrix (a slice when slot i is class i, as CQ-DINO's), same numbers.
"""
from typing import Dict, List

import torch
from mmengine.structures import InstanceData
from torch import Tensor

from mmdet.models.dense_heads import GroundingDINOHead
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy


def slot_scores(probs: Tensor, positive_map: Dict[int, List[int]]) -> Tensor:
    """Class scores from token scores: ``probs`` (..., T) -> (..., len(positive_map)); class ``j`` (1-based key)
    gets the mean of its tokens' scores (as mmdet's ``convert_grounding_to_cls_scores`` for one map)."""
    n = len(positive_map)
    if all(positive_map.get(j + 1) == [j] for j in range(n)):  # slot j is class j (CQ-DINO)
        return probs[..., :n]
    rows = [j - 1 for j, toks in positive_map.items() for _ in toks]
    cols = [t for toks in positive_map.values() for t in toks]
    vals = [1.0 / len(toks) for toks in positive_map.values() for _ in toks]
    avg = probs.new_zeros(n, probs.size(-1))
    avg[torch.tensor(rows), torch.tensor(cols)] = torch.tensor(vals, dtype=probs.dtype)
    return probs @ avg.to(probs.device).t()


@MODELS.register_module()
class QVCQDINOHead(GroundingDINOHead):
    """:class:`mmdet.models.dense_heads.GroundingDINOHead` whose inference converts slot scores to class scores
    without a Python loop over the slots (:func:`slot_scores`); everything else (losses, parameters, state-dict keys)
    is the parent's. ``QVCQDINO(vectorised_slot_scores=True)`` uses it in place of ``GroundingDINOHead``."""

    def _predict_by_feat_single(self, cls_score: Tensor, bbox_pred: Tensor, token_positive_maps: dict,
                                img_meta: dict, rescale: bool = True) -> InstanceData:
        if token_positive_maps is None:
            return super()._predict_by_feat_single(cls_score, bbox_pred, token_positive_maps, img_meta, rescale)
        probs = slot_scores(cls_score.sigmoid(), token_positive_maps)  # (num_queries, num_classes)
        scores, flat = probs.flatten().topk(self.test_cfg.get('max_per_img', len(cls_score)))
        num_classes = probs.size(-1)
        boxes = bbox_cxcywh_to_xyxy(bbox_pred[flat // num_classes])  # normalised -> pixels of the input image
        h, w = img_meta['img_shape'][:2]
        boxes = boxes * boxes.new_tensor([w, h, w, h])
        boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                             boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], -1)
        if rescale:
            assert img_meta.get('scale_factor') is not None
            boxes = boxes / boxes.new_tensor(img_meta['scale_factor']).repeat((1, 2))
        return InstanceData(bboxes=boxes, scores=scores, labels=flat % num_classes)
