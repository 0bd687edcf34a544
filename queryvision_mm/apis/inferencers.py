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

This module holds :class:`QVDetInferencer` (mmdet only); :class:`QVMultiLabelInferencer` lives in
:mod:`.multilabel_inferencer` (mmpretrain) and is imported from here on first access. Both apply the safe
checkpoint-loading shim (:mod:`queryvision_mm.utils.checkpoint`) before loading weights.
"""
import copy
import os.path as osp
from typing import Optional, Tuple

from mmengine.fileio import load
from mmengine.registry import INFERENCERS

from mmdet.apis import DetInferencer

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
        from queryvision_mm.utils.checkpoint import setup_safe_checkpoint_loading
        setup_safe_checkpoint_loading()
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


def __getattr__(name):
    if name == 'QVMultiLabelInferencer':  # mmpretrain-based: imported on first access
        from .multilabel_inferencer import QVMultiLabelInferencer
        return QVMultiLabelInferencer
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
