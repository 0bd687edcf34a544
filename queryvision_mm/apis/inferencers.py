"""Inferencers for our configs (issue 16, item 2): mmdet's ``DetInferencer`` and mmpretrain's
``ImageClassificationInferencer`` with the two things they lack for this package.

* :class:`QVDetInferencer` (Semi-DETR, Sparse Semi-DETR, CQ-DINO): our test pipelines load images with
  ``QVLoadImageFromFile`` (an unreadable image is an error naming it), which ``DetInferencer._init_pipeline`` does not
  recognise (it matches the type name ``'LoadImageFromFile'`` only) and so refuses the config; here any loader that
  is a ``LoadImageFromFile`` subclass is replaced by ``mmdet.InferencerLoader``. Outputs are mmdet's (``labels``,
  ``scores``, ``bboxes``); for CQ-DINO the labels are already global category ids (``QVCQDINO.predict`` maps the K
  selected slots back, paper Sec. 3), so ``model.dataset_meta['classes'][label]`` is the name.
* :class:`QVMultiLabelInferencer` (QKS, paper Sec. 3.3 "knowledge sharing": one sigmoid score per seen + unseen
  label): mmpretrain's inferencer reports the arg-max label only; this one returns the ``topk`` labels (optionally
  those with score >= ``thr``) with names and scores, names from the checkpoint's ``dataset_meta`` or else from the
  head's label-embedding file (seen labels first, then unseen), and flags unseen labels.

Both accept a model ``Name`` of our ``model-index.yml`` (e.g. ``'semi_detr_demo_shapes'``) instead of a config path;
no weights are published (``Weights: null``), so pass ``weights=`` / ``pretrained=``.
"""
import copy
import os.path as osp
from typing import List, Optional, Tuple

import numpy as np
import torch
from mmengine.fileio import load
from mmengine.registry import INFERENCERS

from mmdet.apis import DetInferencer
from mmpretrain.apis import ImageClassificationInferencer

PACKAGE_DIR = osp.dirname(osp.dirname(osp.abspath(__file__)))


def model_index_root() -> str:
    """The folder holding ``model-index.yml`` and ``configs/``: the source checkout, else ``queryvision_mm/.mim``
    (a regular install, written by setup.py)."""
    repo = osp.dirname(PACKAGE_DIR)
    if osp.isfile(osp.join(repo, 'model-index.yml')) and osp.isdir(osp.join(repo, 'configs')):
        return repo
    return osp.join(PACKAGE_DIR, '.mim')


def find_model(name: str) -> Tuple[str, Optional[str]]:
    """``(config path, weights or None)`` of the model index entry ``name`` (case-insensitive)."""
    root = model_index_root()
    names = []
    for meta_path in load(osp.join(root, 'model-index.yml'))['Import']:
        for entry in load(osp.join(root, meta_path))['Models']:
            names.append(entry['Name'])
            if entry['Name'].lower() == name.lower():
                weights = entry.get('Weights')
                return osp.join(root, entry['Config']), weights[0] if isinstance(weights, list) else weights
    raise ValueError(f'{name!r} is neither a file nor a model of queryvision_mm\'s model-index.yml; '
                     f'known: {", ".join(names)}')


def _is_image_loader(type_name) -> bool:
    """Whether a pipeline step loads the image (``LoadImageFromFile`` or a subclass such as ours)."""
    from mmcv.transforms import LoadImageFromFile
    from mmdet.registry import TRANSFORMS
    if isinstance(type_name, type):
        return issubclass(type_name, LoadImageFromFile)
    cls = TRANSFORMS.get(type_name)
    return cls is not None and issubclass(cls, LoadImageFromFile)


@INFERENCERS.register_module()
class QVDetInferencer(DetInferencer):
    """``DetInferencer`` for our detectors: accepts ``QVLoadImageFromFile`` test pipelines and model names of our
    model index. Use exactly like mmdet's::

        inferencer = QVDetInferencer('configs/cq_dino/demo_v3det.py', weights='epoch_6.pth', device='cpu')
        out = inferencer('demo.jpg', out_dir='outputs', pred_score_thr=0.3)
        out['predictions'][0]  # dict(labels=[...], scores=[...], bboxes=[[x0, y0, x1, y1], ...])
    """

    def __init__(self, model=None, weights=None, device=None, scope='mmdet', palette='none',
                 show_progress=True) -> None:
        import queryvision_mm  # noqa: F401  (registers our modules; the configs' custom_imports are not run here)
        super().__init__(model=model, weights=weights, device=device, scope=scope, palette=palette,
                         show_progress=show_progress)

    def _load_model_from_metafile(self, model: str):
        from mmengine.config import Config
        config, weights = find_model(model)
        return Config.fromfile(config), weights

    def _init_pipeline(self, cfg):
        pipeline = cfg.test_dataloader.dataset.pipeline
        idx = next((i for i, step in enumerate(pipeline) if _is_image_loader(step['type'])), -1)
        if idx >= 0 and pipeline[idx]['type'] != 'LoadImageFromFile':
            cfg = copy.deepcopy(cfg)  # the caller's config stays as it is
            cfg.test_dataloader.dataset.pipeline[idx] = dict(type='LoadImageFromFile')  # -> mmdet.InferencerLoader
        return super()._init_pipeline(cfg)


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
        import queryvision_mm  # noqa: F401
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
