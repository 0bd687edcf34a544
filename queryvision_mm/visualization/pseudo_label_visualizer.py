"""Teacher pseudo-labels beside student predictions, drawn by mmdet's :class:`DetLocalVisualizer`.

Semi-DETR (Zhang et al., CVPR 2023), Sec. 3 / the official ``cls_pseudo_thr``: the teacher's candidates with
``score >= cls_pseudo_thr`` (set A) enter the student's detection loss; the lower-scored candidates are only
material for the consistency queries (set B, Sec. 3.3). The picture draws the candidates on the left (the
``gt_instances`` side of :meth:`DetLocalVisualizer.add_datasample`: set A solid, the rest dashed and faint) and
the student's predictions on the right (the ``pred_instances`` side, ``score > pred_score_thr``).
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.structures import InstanceData

from mmdet.registry import VISUALIZERS
from mmdet.structures import DetDataSample
from mmdet.visualization import DetLocalVisualizer
from mmdet.visualization.palette import get_palette

# per-instance flag the visualizer adds to a copy of the teacher candidates (never to the caller's sample)
_BELOW_THR = 'below_pseudo_thr'


@VISUALIZERS.register_module()
class QVPseudoLabelVisualizer(DetLocalVisualizer):
    """A :class:`DetLocalVisualizer` for semi-supervised detection: ``gt_instances`` carry the teacher's
    candidates (with ``scores``), ``pred_instances`` the student's predictions.

    Candidates with ``score >= pseudo_thr`` are drawn as mmdet draws instances (solid); the others dashed with
    ``candidate_alpha``. Each panel gets a caption (``captions=True``): ``teacher: A >= thr / N candidates`` and
    ``student > thr: M``. Every other behaviour (backends, ``out_file``, ``show``, palettes from
    ``dataset_meta``) is mmdet's.

    Args:
        pseudo_thr (float): Pseudo-label threshold (the model's ``semi_train_cfg.cls_pseudo_thr``).
        candidate_alpha (float): Opacity of the below-threshold candidates.
        captions (bool): Write the per-panel caption.
        **kwargs: :class:`DetLocalVisualizer` arguments (``name``, ``vis_backends``, ``line_width``, ...).
    """

    def __init__(self, name: str = 'qv_pseudo_label_visualizer', pseudo_thr: float = 0.4,
                 candidate_alpha: float = 0.35, captions: bool = True, **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.pseudo_thr = float(pseudo_thr)
        self.candidate_alpha = float(candidate_alpha)
        self.captions = captions
        self._pred_score_thr = 0.3

    # ------------------------------------------------------------------ mmdet's entry point
    def add_datasample(self, name: str, image: np.ndarray, data_sample: Optional[DetDataSample] = None,
                       draw_gt: bool = True, draw_pred: bool = True, show: bool = False, wait_time: float = 0,
                       out_file: Optional[str] = None, pred_score_thr: float = 0.3, step: int = 0) -> None:
        """:meth:`DetLocalVisualizer.add_datasample`, with ``gt_instances`` read as scored teacher candidates."""
        if data_sample is not None and 'gt_instances' in data_sample and 'scores' in data_sample.gt_instances:
            data_sample = data_sample.clone()  # shallow: the instances are copied too before the flag is added
            cand = data_sample.gt_instances.clone()
            cand.set_field(cand.scores < self.pseudo_thr, _BELOW_THR)
            data_sample.gt_instances = cand
        self._pred_score_thr = pred_score_thr
        super().add_datasample(name, image, data_sample, draw_gt=draw_gt, draw_pred=draw_pred, show=show,
                               wait_time=wait_time, out_file=out_file, pred_score_thr=pred_score_thr, step=step)

    def draw_pseudo_labels(self, image: np.ndarray, data_sample: DetDataSample,
                           pred_score_thr: float = 0.3) -> np.ndarray:
        """Draw one (candidates | predictions) pair and return it (RGB, ``(H, 2W, 3)``) without sending it to the
        backends."""
        backends, self._vis_backends = self._vis_backends, {}
        try:
            self.add_datasample('pseudo_labels', image, data_sample, pred_score_thr=pred_score_thr)
        finally:
            self._vis_backends = backends
        return self.get_image()

    # ------------------------------------------------------------------ drawing
    def _draw_instances(self, image: np.ndarray, instances: InstanceData, classes: Optional[List[str]],
                        palette: Optional[List[tuple]]) -> np.ndarray:
        if _BELOW_THR not in instances:  # student predictions (or plain ground truth): mmdet's drawing
            drawn = super()._draw_instances(image, instances, classes, palette)
            if self.captions and 'scores' in instances:
                drawn = self._caption(drawn, f'student > {self._pred_score_thr:g}: {len(instances)}')
            return drawn
        below = getattr(instances, _BELOW_THR).bool()
        faint, solid = instances[below], instances[~below]
        self.set_image(image)
        if len(faint) > 0:
            self._draw_faint(faint, classes, palette)
        drawn = self.get_image()
        if len(solid) > 0:
            drawn = super()._draw_instances(drawn, solid, classes, palette)
        if self.captions:
            drawn = self._caption(
                drawn, f'teacher: {len(solid)} >= {self.pseudo_thr:g} / {len(instances)} candidates')
        return drawn

    def _draw_faint(self, instances: InstanceData, classes: Optional[List[str]],
                    palette: Optional[List[tuple]]) -> None:
        """Below-threshold candidates: dashed, ``candidate_alpha``, small score labels (same class colours)."""
        bboxes = _np(instances.bboxes).reshape(-1, 4)
        labels = _np(instances.labels).reshape(-1).astype(int)
        scores = _np(instances.scores).reshape(-1)
        bbox_palette = get_palette(palette if self.bbox_color is None else self.bbox_color, int(labels.max()) + 1)
        self.draw_bboxes(bboxes, edge_colors=[bbox_palette[lab] for lab in labels], line_styles='--',
                         line_widths=max(self.line_width * 0.6, 1), alpha=self.candidate_alpha)
        for (x1, y1, _, _), lab, score in zip(bboxes, labels, scores):
            name = classes[lab] if classes is not None else f'class {lab}'
            self.draw_texts(f'{name}: {round(float(score) * 100, 1)}', np.array([x1 + 1, y1 + 1]),
                            colors=tuple(bbox_palette[lab]), font_sizes=max(int(self._default_font_size * 0.7), 6))

    def _caption(self, image: np.ndarray, text: str) -> np.ndarray:
        self.set_image(image)
        self.draw_texts(text, np.array([2, self.height - 2]), colors='white', vertical_alignments='bottom',
                        font_sizes=max(int(self._default_font_size * 0.8), 7),
                        bboxes=dict(facecolor='black', alpha=0.6, pad=0.5, edgecolor='none'))
        return self.get_image()

    def title_strip(self, text: str, width: int, height: int = 22) -> np.ndarray:
        """A white ``(height, width, 3)`` strip with ``text`` (row titles of :func:`stack_rows`)."""
        self.set_image(np.full((height, width, 3), 255, np.uint8))
        self.draw_texts(text, np.array([4, height // 2]), colors='black', vertical_alignments='center',
                        font_sizes=max(int(height * 0.55), 7))
        return self.get_image()


def stack_rows(rows: Sequence[np.ndarray], titles: Optional[Sequence[str]] = None,
               visualizer: Optional[QVPseudoLabelVisualizer] = None, gap: int = 4) -> np.ndarray:
    """Stack drawn pairs vertically (right-padded to the widest), each under its title strip."""
    width = max(r.shape[1] for r in rows)
    out = []
    for i, row in enumerate(rows):
        if titles is not None and visualizer is not None:
            out.append(visualizer.title_strip(titles[i], width))
        pad = np.full((row.shape[0], width - row.shape[1], 3), 255, np.uint8)
        out.append(np.concatenate([row, pad], axis=1))
        out.append(np.full((gap, width, 3), 255, np.uint8))
    return np.concatenate(out[:-1], axis=0)


def upscale(image: np.ndarray, samples: Sequence[InstanceData], min_size: int) -> Tuple[np.ndarray, list]:
    """Enlarge a small image (and the boxes of ``samples``) so that its short side is ``min_size`` at least, for
    legible labels; larger images are returned unchanged."""
    import mmcv
    h, w = image.shape[:2]
    factor = max(1.0, float(min_size) / max(min(h, w), 1))
    if factor == 1.0:
        return image, list(samples)
    big = mmcv.imresize(image, (int(round(w * factor)), int(round(h * factor))))
    scale = big.shape[1] / w, big.shape[0] / h
    out = []
    for inst in samples:
        inst = inst.clone()
        inst.bboxes = inst.bboxes * inst.bboxes.new_tensor([scale[0], scale[1], scale[0], scale[1]])
        out.append(inst)
    return big, out


def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
