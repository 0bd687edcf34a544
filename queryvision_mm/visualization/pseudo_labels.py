"""Teacher pseudo-labels beside student predictions, as one PNG (``tools/misc/visualize_pseudo_labels.py``, the
demo's ``pseudo_labels_vs_student.png``) or as training-time images (:class:`QVPseudoLabelVisHook`).

Drawing goes through :class:`QVPseudoLabelVisualizer` (mmdet's :class:`DetLocalVisualizer`); this module only runs
the model and lays the pairs out.
"""
import copy
import os.path as osp
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.structures import InstanceData

from mmdet.registry import VISUALIZERS
from mmdet.structures import DetDataSample
from .pseudo_label_visualizer import QVPseudoLabelVisualizer, stack_rows, upscale


def build_pseudo_label_visualizer(visualizer: Union[None, dict, QVPseudoLabelVisualizer] = None,
                                  **defaults) -> QVPseudoLabelVisualizer:
    """A :class:`QVPseudoLabelVisualizer` from an instance, a config dict or ``defaults`` (built through mmdet's
    ``VISUALIZERS``; each built instance gets its own name, so it never replaces the runner's visualizer)."""
    if isinstance(visualizer, QVPseudoLabelVisualizer):
        return visualizer
    cfg = dict(type='QVPseudoLabelVisualizer', **defaults)
    cfg.update(visualizer or {})
    cfg.setdefault('name', f'qv_pseudo_label_visualizer_{_next_id()}')
    vis = VISUALIZERS.build(cfg)
    if not isinstance(vis, QVPseudoLabelVisualizer):
        raise TypeError(f'pseudo-label visualizer: type={cfg["type"]!r} is not a QVPseudoLabelVisualizer')
    return vis


_COUNTER = [0]


def _next_id() -> int:
    _COUNTER[0] += 1
    return _COUNTER[0]


@torch.no_grad()
def teacher_student_predictions(model, inputs: Sequence[torch.Tensor],
                                data_samples: Sequence[DetDataSample]) -> Tuple[List[InstanceData], List[InstanceData]]:
    """Teacher candidates and student predictions on raw (uint8, ``(3, H, W)``) images, boxes in their frame.

    ``model`` is a :class:`QVSemiDETR` (candidates from ``teacher_pseudo_labels``: NMS, adaptive threshold, the
    subclass filters) or any mmdet semi-supervised detector with ``teacher`` / ``student`` (candidates =
    ``teacher.predict``). The model runs in eval mode without gradients; every submodule's train/eval flag is
    restored afterwards, and the caller's samples are not modified.
    """
    if not (hasattr(model, 'teacher') and hasattr(model, 'student')):
        raise TypeError(f'pseudo-label visualization needs a teacher-student detector; got {type(model).__name__}')
    data = model.data_preprocessor(dict(inputs=list(inputs), data_samples=copy.deepcopy(list(data_samples))), False)
    batch_inputs, samples = data['inputs'], data['data_samples']
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        if hasattr(model, 'teacher_pseudo_labels'):
            candidates = model.teacher_pseudo_labels(batch_inputs, samples)
        else:
            candidates = [s.pred_instances for s in model.teacher.predict(batch_inputs, samples, rescale=False)]
        preds = [s.pred_instances for s in model.student.predict(batch_inputs, copy.deepcopy(samples),
                                                                  rescale=False)]
    finally:
        for module, training in modes:
            module.training = training
    return [c.cpu() for c in candidates], [p.cpu() for p in preds]


def to_rgb(raw: torch.Tensor) -> np.ndarray:
    """A raw pipeline image (``(3, H, W)`` BGR, as mmcv loads it) as an RGB ``(H, W, 3)`` uint8 array."""
    return np.ascontiguousarray(raw.detach().cpu().permute(1, 2, 0).numpy()[..., ::-1]).clip(0, 255).astype(np.uint8)


def draw_pairs(visualizer: QVPseudoLabelVisualizer, images: Sequence[np.ndarray], pseudo: Sequence,
               preds: Sequence, pred_score_thr: float = 0.3, min_size: int = 0) -> List[np.ndarray]:
    """One drawn (candidates | predictions) pair per image (RGB arrays)."""
    out = []
    for img, ps, pr in zip(images, pseudo, preds):
        ps, pr = _instances(ps), _instances(pr)
        if min_size:
            img, (ps, pr) = upscale(img, (ps, pr), min_size)
        sample = DetDataSample(gt_instances=ps, pred_instances=pr)
        out.append(visualizer.draw_pseudo_labels(img, sample, pred_score_thr=pred_score_thr))
    return out


def draw_pseudo_label_grid(images: Sequence[np.ndarray], pseudo: Sequence, preds: Sequence, classes: Sequence[str],
                           out_file: str, pred_score_thr: float = 0.3, titles: Optional[List[str]] = None,
                           pseudo_thr: float = 0.4, min_size: int = 320,
                           visualizer: Union[None, dict, QVPseudoLabelVisualizer] = None) -> str:
    """Write one row per image: teacher candidates (left; solid >= ``pseudo_thr``, dashed below) and student
    predictions (right, ``> pred_score_thr``), each row under its title.

    Args:
        images: RGB uint8 arrays (H, W, 3) in the network-input frame.
        pseudo / preds: objects with ``bboxes`` (N, 4 xyxy), ``labels``, ``scores`` (tensors or arrays).
        classes: class names.
        out_file: PNG path (folders are created).
        min_size: small images are enlarged to this short side (legible labels).
        visualizer: a :class:`QVPseudoLabelVisualizer` or its config (default: built with ``pseudo_thr``).
    """
    import mmcv
    vis = build_pseudo_label_visualizer(visualizer, pseudo_thr=pseudo_thr)
    vis.dataset_meta = dict(classes=tuple(classes), **{k: v for k, v in (vis.dataset_meta or {}).items()
                                                        if k != 'classes'})
    rows = draw_pairs(vis, images, pseudo, preds, pred_score_thr, min_size)
    grid = stack_rows(rows, titles, vis)
    mmcv.imwrite(grid[..., ::-1], out_file)  # creates the folders
    return out_file


def _instances(x) -> InstanceData:
    if isinstance(x, InstanceData):
        return x
    return InstanceData(bboxes=torch.as_tensor(np.asarray(x.bboxes), dtype=torch.float32).reshape(-1, 4),
                        labels=torch.as_tensor(np.asarray(x.labels)).long().reshape(-1),
                        scores=torch.as_tensor(np.asarray(x.scores), dtype=torch.float32).reshape(-1))


@torch.no_grad()
def run_pseudo_label_visualization(model, dataset, out_file: str, num_images: int = 4,
                                   pred_score_thr: float = 0.3, min_size: int = 320,
                                   visualizer: Union[None, dict, QVPseudoLabelVisualizer] = None) -> str:
    """Run a :class:`QVSemiDETR` model on the first ``num_images`` of ``dataset`` (a test-style pipeline), one
    image per batch (DETR outputs depend on batch padding), and draw the teacher's candidates beside the
    student's predictions with :class:`QVPseudoLabelVisualizer` (``pseudo_thr`` = the model's
    ``semi_train_cfg.cls_pseudo_thr``; ``dataset_meta`` = the dataset's metainfo)."""
    model.eval()
    vis = build_pseudo_label_visualizer(visualizer, pseudo_thr=model.semi_train_cfg.cls_pseudo_thr)
    vis.dataset_meta = dataset.metainfo
    images, pseudo, preds, titles = [], [], [], []
    for idx in range(min(num_images, len(dataset))):
        item = dataset[idx]
        cands, pr = teacher_student_predictions(model, [item['inputs']], [item['data_samples']])
        images.append(to_rgb(item['inputs']))
        pseudo.append(cands[0])
        preds.append(pr[0])
        titles.append(osp.basename(item['data_samples'].img_path))
    return draw_pseudo_label_grid(images, pseudo, preds, dataset.metainfo['classes'], out_file, pred_score_thr,
                                  titles, min_size=min_size, visualizer=vis)
