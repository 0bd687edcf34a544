"""Query Refinement Module (QRM) of Sparse Semi-DETR (CVPR 2024), reconstructed from the paper's text.

The paper's equations 3-6 are not available; what the text states (Sec. 4.1 and supplement Tables 5, 10, 11)
and the choices made here are listed in README "Sparse Semi-DETR". Every ambiguous choice is an argument.
"""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmcv.ops import RoIAlign
from mmengine.model import BaseModule
from torch import Tensor, nn

from mmdet.registry import MODELS

ATTENTION_CHOICES = ('high_res', 'low_res', 'both', 'none')
SELECT_BY_CHOICES = ('teacher_score', 'similarity')


@MODELS.register_module()
class QVQueryRefinementModule(BaseModule):
    r"""Builds one refined content query per pseudo box from two feature resolutions.

    For each box (RoI Align, ``roi_size`` x ``roi_size`` = T tokens per box):

    1. :math:`X_h` = RoI features of the high-resolution (low-level) map ``featmap_strides[high_res_level]``,
       :math:`X_l` = RoI features of the low-resolution (high-level) map ``featmap_strides[low_res_level]``;
       both reduced from ``in_channels`` to ``reduced_channels`` per token (resolution kept; "eq. 3").
    2. Attention block on the chosen branch ("eq. 3-5"): multi-head self-attention over the T tokens of a
       box, :math:`E = X + \mathrm{softmax}(QK^\top/\sqrt{d})V` (normalised weights applied to the values).
       ``attention_on``: ``'high_res'`` (default, the paper's best row of supplement Table 10), ``'low_res'``,
       ``'both'`` (Table 10 b) or ``'none'`` (Table 10 a).
    3. Similarity selection ("eq. 6", ``similarity=True``): cosine similarity between every attended token
       :math:`e_i` and every token :math:`o_j` of the other branch; each attended token takes its most similar
       partner :math:`o_{j^*(i)}`, and the box scores :math:`s = \frac1T\sum_i \max_j \cos(e_i, o_j)`.
       With ``similarity=False`` the other branch is taken token-aligned (:math:`o_i`), every box is kept and
       the score is 0 (supplement Table 11, "without similarity").
    4. Refined query: :math:`[E; O_{sel}]` (T tokens x ``2 * reduced_channels``) flattened and mapped to
       ``out_dims`` by one linear layer (``with_mlp=False``, Table 5c best) or by Semi-DETR's projector MLP
       (Linear-BN-ReLU-Linear-ReLU, ``with_mlp=True``).

    The detector keeps, per image, the ``ceil(keep_ratio * n)`` best boxes (the "sparse", fewer refined
    queries; see :meth:`select`), ranked by ``select_by``: ``'teacher_score'`` (default) = the pseudo box's
    teacher confidence; ``'similarity'`` = the step-3 score :math:`s`. :math:`s` is detached and no loss
    trains it, and for boxes under ~32 px the stride-32 RoI Align tokens interpolate <= 4 cells (nearly
    constant tokens, so :math:`s` depends on the box size): ranking by it keeps mostly large boxes (measured in
    README "Sparse Semi-DETR"), against the paper's small-object claim (abstract, Table 1 AP_s).

    Args:
        in_channels (int): Channels of the neck outputs. Defaults to 256.
        out_dims (int): Query dimension of the decoder. Defaults to 256.
        roi_size (int): RoI Align output size. Defaults to 7.
        featmap_strides (Sequence[int]): Strides of the neck outputs. Defaults to (8, 16, 32, 64).
        high_res_level (int): Index of the high-resolution (low-level) map. Defaults to 0 (stride 8).
        low_res_level (int): Index of the low-resolution (high-level) map. Defaults to 2 (stride 32).
        reduced_channels (int): Channels after the reduction. Defaults to 64.
        num_heads (int): Heads of the attention block. Defaults to 8.
        attention_on (str): See step 2. Defaults to 'high_res'.
        similarity (bool): Step 3 on/off. Defaults to True.
        keep_ratio (float, optional): Fraction of each image's boxes kept by similarity score; None keeps all.
            Ignored when ``similarity=False``. Defaults to 0.5.
        select_by (str): Ranking signal of the kept boxes, ``'teacher_score'`` or ``'similarity'``.
            Defaults to 'teacher_score'.
        with_mlp (bool): Use Semi-DETR's projector MLP instead of one linear layer. Defaults to False.
        mlp_hidden_dims (int): Hidden width of that MLP. Defaults to 1024.
    """

    def __init__(self,
                 in_channels: int = 256,
                 out_dims: int = 256,
                 roi_size: int = 7,
                 featmap_strides: Sequence[int] = (8, 16, 32, 64),
                 high_res_level: int = 0,
                 low_res_level: int = 2,
                 reduced_channels: int = 64,
                 num_heads: int = 8,
                 attention_on: str = 'high_res',
                 similarity: bool = True,
                 keep_ratio: float = 0.5,
                 select_by: str = 'teacher_score',
                 with_mlp: bool = False,
                 mlp_hidden_dims: int = 1024,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if attention_on not in ATTENTION_CHOICES:
            raise ValueError(f'QVQueryRefinementModule: attention_on must be one of {ATTENTION_CHOICES}, '
                             f'got {attention_on!r}')
        for name, level in (('high_res_level', high_res_level), ('low_res_level', low_res_level)):
            if not 0 <= level < len(featmap_strides):
                raise ValueError(f'QVQueryRefinementModule: {name}={level} is not an index of featmap_strides '
                                 f'{tuple(featmap_strides)}')
        if select_by not in SELECT_BY_CHOICES:
            raise ValueError(f'QVQueryRefinementModule: select_by must be one of {SELECT_BY_CHOICES}, '
                             f'got {select_by!r}')
        if keep_ratio is not None and not 0 < keep_ratio <= 1:
            raise ValueError(f'QVQueryRefinementModule: keep_ratio must be in (0, 1] or None, got {keep_ratio}')
        self.featmap_strides = tuple(featmap_strides)
        self.high_res_level = high_res_level
        self.low_res_level = low_res_level
        self.attention_on = attention_on
        self.similarity = similarity
        self.keep_ratio = keep_ratio
        self.select_by = select_by
        self.with_mlp = with_mlp
        self.num_tokens = roi_size * roi_size
        self.roi_high = RoIAlign(roi_size, spatial_scale=1.0 / featmap_strides[high_res_level], sampling_ratio=0)
        self.roi_low = RoIAlign(roi_size, spatial_scale=1.0 / featmap_strides[low_res_level], sampling_ratio=0)
        self.reduce_high = nn.Linear(in_channels, reduced_channels)
        self.reduce_low = nn.Linear(in_channels, reduced_channels)
        if attention_on in ('high_res', 'both'):
            self.attn_high = nn.MultiheadAttention(reduced_channels, num_heads, batch_first=True)
        if attention_on in ('low_res', 'both'):
            self.attn_low = nn.MultiheadAttention(reduced_channels, num_heads, batch_first=True)
        flat = self.num_tokens * 2 * reduced_channels
        if with_mlp:
            self.out_proj = nn.Sequential(
                nn.Linear(flat, mlp_hidden_dims), nn.BatchNorm1d(mlp_hidden_dims), nn.ReLU(inplace=True),
                nn.Linear(mlp_hidden_dims, out_dims), nn.ReLU(inplace=True))
        else:
            self.out_proj = nn.Linear(flat, out_dims)

    @staticmethod
    def _attend(attn: nn.MultiheadAttention, x: Tensor) -> Tensor:
        return x + attn(x, x, x, need_weights=False)[0]

    @staticmethod
    def select_similar(attended: Tensor, other: Tensor) -> Tuple[Tensor, Tensor]:
        """For each attended token, the most cosine-similar token of ``other`` (same box), and the box score
        (mean over attended tokens of that best similarity). Shapes (N, T, C) -> (N, T, C), (N,)."""
        sim = F.normalize(attended, dim=-1) @ F.normalize(other, dim=-1).transpose(1, 2)  # (N, T, T)
        best, idx = sim.max(dim=-1)
        selected = torch.gather(other, 1, idx.unsqueeze(-1).expand(-1, -1, other.size(-1)))
        return selected, best.mean(dim=-1)

    def forward(self, feats: Sequence[Tensor], rois: Tensor) -> Tuple[Tensor, Tensor]:
        """
        Args:
            feats: Neck outputs (B, C, H_l, W_l), ordered as ``featmap_strides``.
            rois: (N, 5) ``[batch_idx, x1, y1, x2, y2]`` in input pixels (``mmdet.structures.bbox.bbox2roi``).

        Returns:
            tuple: content queries (N, out_dims) and box scores (N,) (0 without similarity).
        """
        def tokens(roi_layer, feat, reduce):
            r = roi_layer(feat, rois)  # (N, C, S, S)
            return reduce(r.flatten(2).transpose(1, 2))  # (N, T, C_r)

        x_high = tokens(self.roi_high, feats[self.high_res_level], self.reduce_high)
        x_low = tokens(self.roi_low, feats[self.low_res_level], self.reduce_low)
        if self.attention_on in ('high_res', 'both'):
            x_high = self._attend(self.attn_high, x_high)
        if self.attention_on in ('low_res', 'both'):
            x_low = self._attend(self.attn_low, x_low)
        # the attended branch is compared against the other one; 'both'/'none' keep the high-res one first
        primary, other = (x_low, x_high) if self.attention_on == 'low_res' else (x_high, x_low)
        if self.similarity:
            selected, score = self.select_similar(primary, other)
        else:
            selected, score = other, primary.new_zeros(primary.size(0))
        refined = torch.cat([primary, selected], dim=-1).flatten(1)
        if self.with_mlp and refined.size(0) == 1 and self.training:  # BatchNorm1d needs two rows
            return self.out_proj(refined.expand(2, -1))[:1], score.detach()
        return self.out_proj(refined), score.detach()

    def select(self, scores: Tensor, teacher_scores: Optional[Tensor] = None) -> Tensor:
        """Indices (sorted, in box order) of the boxes one image keeps: the ``ceil(keep_ratio * n)`` highest
        ranked (at least one box), or all boxes when ``keep_ratio`` is None or similarity is off. The ranking
        is ``teacher_scores`` (the pseudo boxes' confidences) when ``select_by='teacher_score'``, else the
        similarity ``scores``."""
        n = scores.numel()
        if n == 0 or self.keep_ratio is None or not self.similarity:
            return torch.arange(n, device=scores.device)
        if self.select_by == 'teacher_score':
            if teacher_scores is None or teacher_scores.numel() != n:
                raise ValueError("QVQueryRefinementModule.select: select_by='teacher_score' needs one teacher "
                                 'score per box')
            scores = teacher_scores
        k = max(1, math.ceil(self.keep_ratio * n))
        # stable: among equal scores the earlier (higher-confidence) pseudo box wins
        order = torch.sort(scores, descending=True, stable=True).indices
        return order[:k].sort().values
