"""MaO search pictures through mmpretrain's visualizer: :class:`QVMaORetrievalVisualizer` (a
:class:`mmpretrain.visualization.UniversalVisualizer`).

One row of panels, all scaled to ``panel_height``: the query image with its object box, then the ranked gallery
images, each with its retrieval score, the gallery object that matched the query (box + that object's similarity)
and, where given, a LeGrad heatmap of the query descriptor overlaid (``draw_featmap``'s jet overlay). Boxes and
texts are drawn with mmengine's ``draw_bboxes`` / ``draw_texts``; the result goes, as mmpretrain's
``visualize_image_retrieval`` does, to ``out_file`` when given, otherwise to the visualizer's storage backends
(``LocalVisBackend``, ``TensorboardVisBackend``, ...) through ``add_image``.

:meth:`QVMaORetrievalVisualizer.visualize_image_retrieval` keeps mmpretrain's signature, so
``ImageRetrievalInferencer`` draws with it too (the query box from ``data_sample.query_box`` when the sample has
one). ``queryvision_mm.apis.mao.draw_search_grid`` (``tools/mao/search.py``) computes the matched objects and the
heatmaps and calls :meth:`QVMaORetrievalVisualizer.visualize_mao_retrieval`.
"""
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.dist import master_only

from mmpretrain.registry import VISUALIZERS
from mmpretrain.visualization import UniversalVisualizer


def _check_image(image, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'QVMaORetrievalVisualizer: {what} must be an HxWx3 uint8 RGB image, got '
                         f'{image.shape} {image.dtype}')
    return image


def _check_box(box, what: str) -> Optional[np.ndarray]:
    if box is None:
        return None
    b = np.asarray(box, dtype=np.float32).reshape(-1)
    if b.shape != (4, ) or not np.all(np.isfinite(b)) or b[2] <= b[0] or b[3] <= b[1]:
        raise ValueError(f'QVMaORetrievalVisualizer: {what} must be [x0, y0, x1, y1] with x1 > x0, y1 > y0, got '
                         f'{list(np.asarray(box).reshape(-1))}')
    return b


@VISUALIZERS.register_module()
class QVMaORetrievalVisualizer(UniversalVisualizer):
    """Query + top-k gallery grid of MaO small-object retrieval (see the module docstring).

    Args:
        name (str): Instance name (mmengine ``ManagerMixin``).
        panel_height (int): Height in pixels every panel is scaled to (aspect kept).
        gap (int): White pixels between panels.
        heatmap_alpha (float): Opacity of the LeGrad overlay.
        query_color, match_color (tuple): RGB of the query box and of the matched gallery object box.
        line_width (int): Box line width in pixels.
        **kwargs: :class:`UniversalVisualizer` arguments (``vis_backends``, ``save_dir``, ...).
    """

    def __init__(self, name: str = 'qv_mao_retrieval_visualizer', panel_height: int = 256, gap: int = 4,
                 heatmap_alpha: float = 0.45, query_color: Sequence[int] = (0, 255, 0),
                 match_color: Sequence[int] = (255, 48, 48), line_width: int = 2, **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        if int(panel_height) < 16:
            raise ValueError(f'QVMaORetrievalVisualizer.panel_height must be >= 16, got {panel_height}')
        self.panel_height, self.gap = int(panel_height), int(gap)
        self.heatmap_alpha, self.line_width = float(heatmap_alpha), int(line_width)
        self.query_color, self.match_color = tuple(query_color), tuple(match_color)

    # ------------------------------------------------------------------------------------------------ panels
    def panel_size(self, shape: Sequence[int]) -> tuple:
        """(height, width) of the panel of an image of ``shape`` (H, W, ...)."""
        h, w = int(shape[0]), int(shape[1])
        return self.panel_height, max(1, int(round(w * self.panel_height / h)))

    def _panel(self, image: np.ndarray, box: Optional[np.ndarray], color, texts: List[str],
               heatmap=None) -> np.ndarray:
        import mmcv
        ph, pw = self.panel_size(image.shape)
        scale_x, scale_y = pw / image.shape[1], ph / image.shape[0]
        img = mmcv.imresize(image, (pw, ph), interpolation='area' if scale_y < 1 else 'bilinear')
        if heatmap is not None:
            m = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))
            if m.dim() != 2:
                raise ValueError(f'QVMaORetrievalVisualizer: a heatmap must be HxW, got {tuple(m.shape)}')
            m = torch.nn.functional.interpolate(m[None, None], size=(ph, pw), mode='bilinear',
                                                align_corners=False)[0]
            img = self.draw_featmap(m, img, channel_reduction='squeeze_mean', alpha=self.heatmap_alpha)
        self.set_image(img)
        if box is not None:
            # drawn where it lies in the picture (proposal boxes may reach past the border)
            scaled = np.clip(box * np.array([scale_x, scale_y, scale_x, scale_y], dtype=np.float32), 0,
                             np.array([pw - 1, ph - 1, pw - 1, ph - 1], dtype=np.float32))
            if scaled[2] > scaled[0] and scaled[3] > scaled[1]:
                self.draw_bboxes(scaled[None], edge_colors=[color], line_widths=[self.line_width], alpha=1.0)
        if texts:
            size = max(8, int(round(self.panel_height / 24)))
            self.draw_texts('\n'.join(texts), np.array([[3, 3]]), font_sizes=size, colors='white',
                            font_families='monospace',
                            bboxes=dict(facecolor='black', alpha=0.55, pad=1.5, edgecolor='none'))
        return self.get_image()

    def _assemble(self, panels: List[np.ndarray]) -> np.ndarray:
        h = panels[0].shape[0]
        gap = np.full((h, self.gap, 3), 255, np.uint8)
        out = [panels[0]]
        for p in panels[1:]:
            out += [gap, p]
        return np.concatenate(out, axis=1)

    def _emit(self, drawn: np.ndarray, show: bool, wait_time: float, out_file: Optional[str], name: str,
              step: int) -> np.ndarray:
        """mmpretrain's output rule: ``out_file`` when given, otherwise the storage backends."""
        self.set_image(drawn)
        if show:
            self.show(drawn, win_name=name, wait_time=wait_time)
        if out_file is not None:
            import mmcv
            mmcv.imwrite(drawn[..., ::-1], out_file)
        else:
            self.add_image(name, drawn, step=step)
        return drawn

    # ------------------------------------------------------------------------------------------------ entry points
    @master_only
    def visualize_mao_retrieval(self, query_image: np.ndarray, query_box: Optional[Sequence[float]],
                                matches: Sequence[Dict], draw_score: bool = True, show: bool = False,
                                wait_time: float = 0, out_file: Optional[str] = None, name: str = 'mao_search',
                                step: int = 0) -> np.ndarray:
        """Draw the query (``query_box`` in ``query_color``) and the ranked ``matches``.

        Each match is a dict: ``image`` (HxWx3 uint8 RGB) or ``img_path``; ``score`` (retrieval score); optional
        ``box`` (the matched gallery object, image coordinates) with ``box_score``, ``heatmap`` (HxW, any size:
        scaled to the panel; values are min-max normalised) and ``label`` (defaults to the file name). Returns the
        drawn RGB grid, of height ``panel_height`` and width the sum of the panel widths plus the gaps.
        """
        from ..utils.image_io import read_rgb
        query_image = _check_image(query_image, 'the query image')
        panels = [self._panel(query_image, _check_box(query_box, 'the query box'), self.query_color, ['query'])]
        for rank, m in enumerate(matches, 1):
            if 'image' in m and m['image'] is not None:
                img = _check_image(m['image'], f'match {rank} image')
            elif m.get('img_path'):
                img = read_rgb(m['img_path'])
            else:
                raise ValueError(f'QVMaORetrievalVisualizer: match {rank} has neither image nor img_path')
            label = m.get('label') or (osp.basename(m['img_path'])[:18] if m.get('img_path') else f'#{rank}')
            texts = [f'{rank}. {label}']
            if draw_score and m.get('score') is not None:
                texts.append(f'score {float(m["score"]):.3f}')
            if draw_score and m.get('box') is not None and m.get('box_score') is not None:
                texts.append(f'object {float(m["box_score"]):.3f}')
            panels.append(self._panel(img, _check_box(m.get('box'), f'match {rank} box'), self.match_color, texts,
                                      m.get('heatmap')))
        return self._emit(self._assemble(panels), show, wait_time, out_file, name, step)

    @master_only
    def visualize_image_retrieval(self, image: np.ndarray, data_sample, prototype_dataset, topk: int = 1,
                                  draw_score: bool = True, resize: Optional[int] = None, text_cfg: dict = dict(),
                                  show: bool = False, wait_time: float = 0, out_file: Optional[str] = None,
                                  name: Optional[str] = '', step: int = 0) -> np.ndarray:
        """mmpretrain's ``visualize_image_retrieval`` (``ImageRetrievalInferencer``) as a MaO grid: the top-``topk``
        of ``data_sample.pred_score`` from ``prototype_dataset``; the query box is ``data_sample.query_box`` if set;
        ``resize`` (when given) is the panel height; ``text_cfg`` is not used (the panels carry their own texts)."""
        if resize is not None:
            self.panel_height = int(resize)
        scores = data_sample.pred_score
        k = min(int(topk), int(scores.numel()))
        values, indices = torch.topk(scores, k=k)
        matches = [dict(img_path=prototype_dataset.get_data_info(int(i))['img_path'], score=float(v))
                   for v, i in zip(values, indices) if torch.isfinite(v)]
        box = data_sample.get('query_box') if hasattr(data_sample, 'get') else None
        return self.visualize_mao_retrieval(image, box, matches, draw_score=draw_score, show=show,
                                            wait_time=wait_time, out_file=out_file, name=name or 'mao_search',
                                            step=step)
