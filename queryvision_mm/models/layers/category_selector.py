"""CQ-DINO's image-guided category selector: learnable category queries cross-attend to image tokens, are scored,
and the top-K image-conditioned category tokens become the detector's class tokens."""
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.model import BaseModule
from torch import Tensor, nn

from mmdet.registry import MODELS

from ...datasets.category_hierarchy import CategoryHierarchy


class QVCategoryCrossAttentionLayer(nn.Module):
    """Post-LN cross-attention (categories -> image tokens) + FFN, no self-attention between categories (as the
    official tagging head, which deletes the BERT self-attention)."""

    def __init__(self, embed_dims: int, kv_dims: int, num_heads: int, ffn_dims: int, dropout: float) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout, kdim=kv_dims, vdim=kv_dims,
                                                batch_first=True)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.ffn = nn.Sequential(nn.Linear(embed_dims, ffn_dims), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_dims, embed_dims), nn.Dropout(dropout))
        self.norm2 = nn.LayerNorm(embed_dims)
        self.drop = nn.Dropout(dropout)

    def forward(self, query: Tensor, kv: Tensor) -> Tensor:
        query = self.norm1(query + self.drop(self.cross_attn(query, kv, kv, need_weights=False)[0]))
        return self.norm2(query + self.ffn(query))


@MODELS.register_module()
class QVCategoryQuerySelector(BaseModule):
    r"""Learnable category queries, image-guided scoring and top-K selection (CQ-DINO).

    ``E`` (C x ``embed_dims``, learnable; initialised from a class-embedding file written by
    ``tools/misc/make_category_embeddings.py`` and checked against ``class_names``, or randomly) ->
    ReLU(Linear) -> optional relation module (:class:`QVTreeAggregator` / :class:`QVCategorySelfAttention`) ->
    LayerNorm -> ``num_layers`` cross-attention layers over the image tokens ``[mean(C5); flatten(C5)]`` projected to
    ``kv_dims`` -> per-category score (one shared Linear(D, 1)). The top-``topk`` categories of each image (by score,
    descending) give their image-conditioned tokens ``T[top-K]`` (the detector maps them to its width) and their
    **global label ids** (integers end to end; no name lookup).

    Args:
        num_classes (int): C.
        img_in_channels (int): Channels of the backbone's last stage (C5).
        embed_dims, kv_dims, num_layers, num_heads, ffn_dims, dropout: Tagging head (official: 768, 512, 2, 4,
            3072, 0.1).
        topk (int): K (official: 100 V3Det, 30 COCO).
        relation (dict, optional): Config of the relation module.
        embed_file (str, optional): Class-embedding file; its class list must equal ``class_names``.
        class_names (Sequence[str], optional): The dataset's classes (for the file check).
        force_gt_in_topk (bool): In training, replace the lowest-scored selected categories that are not in the image
            by the image's missing ground-truth categories (official: off).
    """

    def __init__(self,
                 num_classes: int,
                 img_in_channels: int,
                 embed_dims: int = 768,
                 kv_dims: int = 512,
                 num_layers: int = 2,
                 num_heads: int = 4,
                 ffn_dims: int = 3072,
                 dropout: float = 0.1,
                 topk: int = 100,
                 relation: Optional[dict] = None,
                 embed_file: Optional[str] = None,
                 class_names: Optional[Sequence[str]] = None,
                 force_gt_in_topk: bool = False,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if not 1 <= topk <= num_classes:
            raise ValueError(f'QVCategoryQuerySelector: topk={topk} must be in [1, num_classes={num_classes}]')
        self.num_classes, self.topk, self.force_gt_in_topk = num_classes, topk, force_gt_in_topk
        if embed_file is not None:
            from ...utils.text_embeddings import load_class_embeddings
            emb, names, _ = load_class_embeddings(embed_file, expected_class_names=class_names)
            if emb.size(0) != num_classes:
                raise ValueError(f'{embed_file}: holds {emb.size(0)} classes, the model has num_classes={num_classes}')
            if emb.size(1) != embed_dims:
                raise ValueError(f'{embed_file}: embeddings are {emb.size(1)}-d, embed_dims={embed_dims}')
            self.category_embed = nn.Parameter(emb.clone().float())
        else:
            self.category_embed = nn.Parameter(torch.randn(num_classes, embed_dims) * 0.02)
        self.wordvec_proj = nn.Linear(embed_dims, embed_dims)
        self.relation = MODELS.build(relation) if relation is not None else None
        self.label_norm = nn.LayerNorm(embed_dims)
        self.image_proj = nn.Linear(img_in_channels, kv_dims)
        self.layers = nn.ModuleList(
            QVCategoryCrossAttentionLayer(embed_dims, kv_dims, num_heads, ffn_dims, dropout) for _ in range(num_layers))
        self.scorer = nn.Linear(embed_dims, 1)
        # mmdet's GroundingDINO reads the width of the "text" tokens from here and maps them to the transformer
        # width with its own ``text_feat_map`` (Linear(D, 256), xavier, zero bias -- CQ-DINO's projection)
        self.language_backbone = SimpleNamespace(body=SimpleNamespace(language_dim=embed_dims))

    def forward(self, img_feat: Tensor) -> Dict[str, Tensor]:
        """img_feat (B, C_img, H, W) -> ``logits`` (B, C) and image-conditioned ``tokens`` (B, C, D)."""
        flat = img_feat.flatten(2).transpose(1, 2)  # (B, HW, C_img)
        kv = self.image_proj(torch.cat([flat.mean(1, keepdim=True), flat], dim=1))
        cats = torch.relu(self.wordvec_proj(self.category_embed))
        if self.relation is not None:
            cats = self.relation(cats)
        q = self.label_norm(cats).unsqueeze(0).expand(img_feat.size(0), -1, -1)
        for layer in self.layers:
            q = layer(q, kv)
        return dict(logits=self.scorer(q).squeeze(-1), tokens=q)

    def select(self, logits: Tensor, tokens: Tensor, gt_labels: Optional[List[Tensor]] = None) -> Dict[str, Tensor]:
        """Top-K per image: ``indices`` (B, K) global labels by descending score, ``tokens`` (B, K, D).

        With ``force_gt_in_topk`` and ``gt_labels`` (training), missing ground-truth categories replace the
        lowest-scored selected non-ground-truth ones (at most K categories are kept per image)."""
        k = self.topk
        indices = logits.detach().topk(k, dim=1).indices
        if self.force_gt_in_topk and gt_labels is not None:
            indices = torch.stack([self._force(idx, gt) for idx, gt in zip(indices, gt_labels)])
        selected = torch.gather(tokens, 1, indices.unsqueeze(-1).expand(-1, -1, tokens.size(-1)))
        return dict(indices=indices, tokens=selected)

    def _force(self, idx: Tensor, gt: Tensor) -> Tensor:
        gt = torch.unique(gt)
        missing = gt[~torch.isin(gt, idx)]
        if missing.numel() == 0:
            return idx
        missing = missing[:idx.numel()]
        replaceable = torch.nonzero(~torch.isin(idx, gt)).flatten().flip(0)[:missing.numel()]  # lowest scores first
        out = idx.clone()
        out[replaceable] = missing[:replaceable.numel()]
        return out

    @staticmethod
    def local_labels(gt_labels: Tensor, indices: Tensor) -> Tensor:
        """Position of each ground-truth label in one image's selected list (``indices`` (K,)), -1 if not selected."""
        match = gt_labels[:, None] == indices[None, :]
        return torch.where(match.any(1), match.float().argmax(1), gt_labels.new_full(gt_labels.shape, -1))

    @staticmethod
    def recall_at_k(indices: Tensor, gt_labels: List[Tensor]) -> Tensor:
        """Fraction of each image's distinct ground-truth categories that are selected, averaged over images with
        ground truth (0-dim tensor; NaN if no image has any)."""
        vals = [torch.isin(torch.unique(g), idx).float().mean() for idx, g in zip(indices, gt_labels) if g.numel()]
        return torch.stack(vals).mean() if vals else indices.new_tensor(float('nan'), dtype=torch.float)

    def image_targets(self, gt_labels: List[Tensor], hierarchy: Optional[CategoryHierarchy] = None):
        """Multi-hot image-level targets (B, C) from the box labels, and loss weights (B, C): with a hierarchy,
        ancestors of a positive category that are not positive themselves get weight 0 (official parent mask:
        "car" does not push "vehicle" to negative; the official code multiplies logit and target by 0, which gives
        the same gradient)."""
        b = len(gt_labels)
        dev = self.category_embed.device
        targets = torch.zeros(b, self.num_classes, device=dev)
        weights = torch.ones(b, self.num_classes, device=dev)
        for i, g in enumerate(gt_labels):
            targets[i, g.to(dev)] = 1
            if hierarchy is not None:
                for label in torch.unique(g).tolist():
                    anc = hierarchy.ancestors[label]
                    if anc:
                        weights[i, anc] = 0
        weights[targets > 0] = 1
        return targets, weights
