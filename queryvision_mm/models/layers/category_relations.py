"""Relations between category queries: V3Det hierarchy aggregation (CQ-DINO) and category self-attention (COCO)."""
import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from mmdet.registry import MODELS

from ...datasets.category_hierarchy import CategoryHierarchy


@MODELS.register_module()
class QVTreeAggregator(nn.Module):
    r"""Mixes each parent category's embedding with the mean of its children's, bottom-up (CQ-DINO, V3Det).

    For levels :math:`L = L_{max} \dots 0` and every category :math:`p` of level :math:`L` that has children:
    :math:`f_p \leftarrow (1 - w_p) f_p + w_p \cdot \frac{1}{|ch(p)|}\sum_{c \in ch(p)} f_c`, with
    :math:`w_p = w_{min} + w_{span} \cdot \log(2 + N_{desc}(p)) / \log(2 + N_{max})` (official constants
    ``w_min = w_span = 0.4``, ``N_max = 13204``; the paper's text mentions w = 0.3). Children are the nearest category
    descendants (multi-parent DAG: a child contributes to each of its parents), so children are updated before their
    parents. Levels deeper than ``max_level`` are merged into it (official: 7), and within one level the children's
    values from before that level's update are used. No learnable parameters.

    Args:
        hierarchy (CategoryHierarchy, optional): Relations between labels.
        tree_file (str, optional): V3Det category-tree JSON, used with ``category_ids`` when ``hierarchy`` is None.
        category_ids (Sequence[int], optional): Category ids in label order; default ``1..num_classes``.
        num_classes (int, optional): Checked against the hierarchy (and used for the default ids).
        root (str, optional), strict (bool): For ``tree_file``, see :meth:`CategoryHierarchy.from_v3det_tree`
            (default: the top-level node reaching the most categories; categories outside the tree are kept and
            counted in a warning, ``strict=True`` raises instead).
        w_min, w_span, max_count, max_level: See above.
    """

    def __init__(self,
                 hierarchy: Optional[CategoryHierarchy] = None,
                 tree_file: Optional[str] = None,
                 category_ids: Optional[Sequence[int]] = None,
                 num_classes: Optional[int] = None,
                 root: Optional[str] = None,
                 strict: bool = False,
                 w_min: float = 0.4,
                 w_span: float = 0.4,
                 max_count: int = 13204,
                 max_level: int = 7) -> None:
        super().__init__()
        if hierarchy is None:
            if tree_file is None:
                raise ValueError('QVTreeAggregator: give a hierarchy or a tree_file')
            if category_ids is None:
                if num_classes is None:
                    raise ValueError('QVTreeAggregator: tree_file needs category_ids or num_classes')
                category_ids = range(1, num_classes + 1)
            hierarchy = CategoryHierarchy.from_v3det_tree(tree_file, list(category_ids), root=root, strict=strict)
        if num_classes is not None and hierarchy.num_classes != num_classes:
            raise ValueError(f'QVTreeAggregator: the hierarchy ({hierarchy.source}) has {hierarchy.num_classes} '
                             f'categories, the model {num_classes}')
        self.num_classes = hierarchy.num_classes
        self.w_min, self.w_span, self.max_count, self.max_level = w_min, w_span, max_count, max_level
        levels = [min(lv, max_level) for lv in hierarchy.level]
        self._levels = []
        for lv in range(max(levels, default=0), -1, -1):
            pairs = [(p, c) for p in range(self.num_classes) if levels[p] == lv for c in hierarchy.children[p]]
            if not pairs:
                continue
            parent_idx = torch.tensor([p for p, _ in pairs], dtype=torch.long)
            child_idx = torch.tensor([c for _, c in pairs], dtype=torch.long)
            parents = torch.unique(parent_idx)
            count = torch.zeros(self.num_classes).index_add_(0, parent_idx, torch.ones(len(pairs)))
            w = torch.tensor([self.weight(hierarchy.num_descendants[p]) for p in parents.tolist()])
            name = f'level{lv}'
            self.register_buffer(f'{name}_parent_idx', parent_idx, persistent=False)
            self.register_buffer(f'{name}_child_idx', child_idx, persistent=False)
            self.register_buffer(f'{name}_parents', parents, persistent=False)
            self.register_buffer(f'{name}_count', count[parents], persistent=False)
            self.register_buffer(f'{name}_weight', w, persistent=False)
            self._levels.append(name)

    def weight(self, num_descendants: int) -> float:
        return self.w_min + self.w_span * math.log(2 + num_descendants) / math.log(2 + self.max_count)

    def forward(self, feats: Tensor) -> Tensor:
        """(..., C, D) -> (..., C, D)."""
        if feats.size(-2) != self.num_classes:
            raise ValueError(f'QVTreeAggregator: expected {self.num_classes} categories, got {feats.size(-2)}')
        out = feats
        for name in self._levels:
            parent_idx, child_idx = getattr(self, f'{name}_parent_idx'), getattr(self, f'{name}_child_idx')
            parents = getattr(self, f'{name}_parents')
            sums = out.new_zeros(out.shape).index_add(-2, parent_idx, out.index_select(-2, child_idx))
            mean = sums.index_select(-2, parents) / getattr(self, f'{name}_count').to(out.dtype)[:, None]
            w = getattr(self, f'{name}_weight').to(out.dtype)[:, None]
            mixed = (1 - w) * out.index_select(-2, parents) + w * mean
            out = out.index_copy(-2, parents, mixed)
        return out


@MODELS.register_module()
class QVCategorySelfAttention(nn.Module):
    """Self-attention across the C category embeddings + residual + LayerNorm (CQ-DINO's COCO variant).

    ``degenerate_compat=True`` reproduces the official module, which feeds a ``(1, C, D)`` table to a
    ``batch_first=False`` attention: a sequence of length 1, so each category attends only to itself
    (out_proj(v_proj(x)) + residual + LN) — kept for loading official checkpoints, off by default.
    """

    def __init__(self, embed_dims: int = 768, num_heads: int = 8, dropout: float = 0.0,
                 degenerate_compat: bool = False) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(embed_dims)
        self.degenerate_compat = degenerate_compat

    def forward(self, feats: Tensor) -> Tensor:
        """(C, D) or (B, C, D) -> same shape."""
        squeeze = feats.dim() == 2
        x = feats.unsqueeze(0) if squeeze else feats
        if self.degenerate_compat:
            seq = x.reshape(-1, 1, x.size(-1))  # every category is its own length-1 sequence
            attended = self.attn(seq, seq, seq, need_weights=False)[0].reshape(x.shape)
        else:
            attended = self.attn(x, x, x, need_weights=False)[0]
        out = self.norm(x + attended)
        return out.squeeze(0) if squeeze else out
