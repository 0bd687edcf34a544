"""``QVMultiLabelInferencer``: mmpretrain's ``ImageClassificationInferencer`` for multi-label QKS models (see
:mod:`.inferencers`, which documents both inferencers and holds the detection one)."""
import copy
import os.path as osp
from typing import List, Optional

import numpy as np
import torch
from mmengine.registry import INFERENCERS

from mmpretrain.apis import ImageClassificationInferencer
from .inferencers import find_model


@INFERENCERS.register_module()
class QVMultiLabelInferencer(ImageClassificationInferencer):
    """Multi-label (QKS) inference with names: ``ImageClassificationInferencer`` whose results also hold the top
    ``topk`` labels (``pred_labels``, ``pred_classes``, ``pred_label_scores``, ``pred_is_unseen``), restricted to
    scores >= ``thr`` when given. ``pred_scores`` (all labels), ``pred_label``, ``pred_score`` and ``pred_class``
    (the best label) are kept as mmpretrain returns them::

        inferencer = QVMultiLabelInferencer('configs/qks/demo_photos.py', pretrained='epoch_40.pth', topk=3)
        inferencer('photo.jpg')[0]['pred_classes']  # e.g. ['person', 'sky', 'flag']
    """

    postprocess_kwargs: set = {'topk', 'thr'}

    def __init__(self, model, pretrained=True, device=None, classes=None, topk: int = 5,
                 thr: Optional[float] = None, **kwargs) -> None:
        import queryvision_mm.mmpretrain_plugin  # noqa: F401  (QKS modules in mmpretrain's registries)
        from queryvision_mm.utils.checkpoint import setup_safe_checkpoint_loading
        setup_safe_checkpoint_loading()
        if isinstance(model, str) and not osp.isfile(model):
            model, weights = find_model(model)
            if pretrained is True:
                pretrained = weights if weights is not None else False
        from mmengine.registry import DefaultScope
        with DefaultScope.overwrite_default_scope('mmpretrain'):  # e.g. after a DetInferencer set 'mmdet'
            super().__init__(model=model, pretrained=pretrained, device=device, classes=classes, **kwargs)
        head = getattr(self.model, 'head', None)
        if self.classes is None and getattr(head, 'label_names', None):
            self.classes = list(head.label_names)
        self.num_seen = getattr(head, 'num_seen', None)
        self.topk, self.thr = topk, thr

    def _init_pipeline(self, cfg):
        from mmengine.registry import DefaultScope
        cfg = copy.deepcopy(cfg)
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            cfg.test_dataloader.dataset.pipeline = [
                t for t in cfg.test_dataloader.dataset.pipeline if not _is_mmpretrain_loader(t['type'])]
            return super()._init_pipeline(cfg)

    def postprocess(self, preds, visualization, return_datasamples=False, topk: Optional[int] = None,
                    thr: Optional[float] = None) -> List[dict]:
        results = super().postprocess(preds, visualization, return_datasamples)
        if return_datasamples:
            return results
        topk = self.topk if topk is None else topk
        thr = self.thr if thr is None else thr
        for result in results:
            scores = torch.as_tensor(np.asarray(result['pred_scores']))
            top_scores, top_labels = scores.topk(min(topk, scores.numel()))
            keep = [i for i, s in enumerate(top_scores.tolist()) if thr is None or s >= thr]
            labels = [int(top_labels[i]) for i in keep]
            result['pred_labels'] = labels
            result['pred_label_scores'] = [float(top_scores[i]) for i in keep]
            if self.classes is not None:
                result['pred_classes'] = [self.classes[i] for i in labels]
            if self.num_seen is not None:
                result['pred_is_unseen'] = [i >= self.num_seen for i in labels]
        return results


def _is_mmpretrain_loader(type_name) -> bool:
    from mmcv.transforms import LoadImageFromFile
    from mmpretrain.registry import TRANSFORMS
    cls = type_name if isinstance(type_name, type) else TRANSFORMS.get(type_name)
    return cls is not None and issubclass(cls, LoadImageFromFile)
