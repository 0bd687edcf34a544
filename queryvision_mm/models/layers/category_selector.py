"""CQ-DINO's image-guided category selector (paper Sec. 3.2, "image-guided query selection"; official
``LearnableCategoryQueryTree`` + the Q2L/Tag2Text tagging head): learnable category queries cross-attend to image
tokens, are scored, and the top-K image-conditioned category tokens become the detector's class tokens.

Efficiency (exact, issue 17): categories never interact inside the tagging head, so they are processed in chunks
(``chunk_size``; activation checkpointing per chunk in training) and the top-K is merged chunk by chunk, so neither
the C x FFN activations nor the B x C x D tokens are held at once; the image-independent category side (word-vector
projection, relation, LayerNorm, the first layer's query projection) is computed once per forward and cached at
inference."""
from contextlib import nullcontext
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mmdet.registry import MODELS

from ...datasets.category_hierarchy import CategoryHierarchy
from .category_relations import QVCategorySelfAttention


class QVCategoryCrossAttentionLayer(nn.Module):
    """Post-LN cross-attention (categories -> image tokens) + FFN, no self-attention between categories (as the
    official tagging head, which deletes the BERT self-attention): ``x = LN(q + drop(attn(q, kv)))``,
    ``out = LN(x + drop(W2 GELU(W1 x)))`` (BERT's ``BertIntermediate`` / ``BertOutput``: no dropout after GELU;
    ``ffn_inner_dropout=True`` keeps the one our earlier versions had, for their checkpoints' behaviour).

    The attention is computed from the ``nn.MultiheadAttention`` weights (same state-dict keys) so that the query
    projection can be done once for all images (:meth:`project_query`) and keys / values once per image
    (:meth:`project_kv`)."""

    def __init__(self, embed_dims: int, kv_dims: int, num_heads: int, ffn_dims: int, dropout: float,
                 ffn_inner_dropout: bool = False) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout, kdim=kv_dims, vdim=kv_dims,
                                                batch_first=True)
        self.norm1 = nn.LayerNorm(embed_dims)
        # Identity keeps the state-dict index of the second Linear (ffn.3) whichever structure is chosen
        self.ffn = nn.Sequential(nn.Linear(embed_dims, ffn_dims), nn.GELU(),
                                 nn.Dropout(dropout) if ffn_inner_dropout else nn.Identity(),
                                 nn.Linear(ffn_dims, embed_dims), nn.Dropout(dropout))
        self.norm2 = nn.LayerNorm(embed_dims)
        self.drop = nn.Dropout(dropout)

    def _in_proj(self, i: int) -> Tuple[Tensor, Optional[Tensor]]:
        attn, d = self.cross_attn, self.cross_attn.embed_dim
        if attn._qkv_same_embed_dim:
            w = attn.in_proj_weight[i * d:(i + 1) * d]
        else:
            w = (attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight)[i]
        b = None if attn.in_proj_bias is None else attn.in_proj_bias[i * d:(i + 1) * d]
        return w, b

    def _heads(self, x: Tensor) -> Tensor:
        """(..., L, D) -> (..., h, L, D / h)."""
        h = self.cross_attn.num_heads
        return x.unflatten(-1, (h, x.size(-1) // h)).transpose(-3, -2)

    def project_query(self, query: Tensor) -> Tensor:
        """Query projection of the cross-attention, (..., L, D) -> (..., L, D)."""
        return F.linear(query, *self._in_proj(0))

    def project_kv(self, kv: Tensor) -> Tuple[Tensor, Tensor]:
        """Image tokens (B, N, kv_dims) -> keys, values (B, h, N, D / h)."""
        return self._heads(F.linear(kv, *self._in_proj(1))), self._heads(F.linear(kv, *self._in_proj(2)))

    def forward_projected(self, query: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``query`` (L, D) shared by all images or (B, L, D), its projection ``q`` (same shape), keys / values of
        :meth:`project_kv` -> (B, L, D)."""
        b = k.size(0)
        q = self._heads(q)
        q = q.expand(b, *q.shape[-3:]) if q.dim() == 3 else q
        p = self.cross_attn.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p).transpose(1, 2).flatten(-2)
        x = self.norm1(query + self.drop(self.cross_attn.out_proj(out)))
        return self.norm2(x + self.ffn(x))

    def forward(self, query: Tensor, kv: Tensor) -> Tensor:
        return self.forward_projected(query, self.project_query(query), *self.project_kv(kv))


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
        label_norm (bool, optional): LayerNorm after the relation module. ``None`` (default) = the official
            structure: on for the tree / no relation (``label_norm``), off after :class:`QVCategorySelfAttention`,
            whose block already ends with a LayerNorm (official COCO module has no second one); ``True`` = our
            earlier COCO structure (two LayerNorms).
        ffn_inner_dropout (bool): Dropout after the FFN's GELU (not in the official BERT layers; earlier versions of
            this module had it). Defaults to False.
        chunk_size (int, optional): Categories per chunk of the tagging head (exact: categories do not interact
            there); ``None`` / 0 = all at once. Defaults to 1024.
        checkpoint_chunks (bool): Activation checkpointing of the category side and of every chunk in training, so
            that peak memory does not grow with C x FFN width. Defaults to True.
        cache_category_side (bool): At inference (eval mode, no gradients) keep the image-independent category
            side (C x D queries and their first-layer projection: 2 x C x D values) between forwards; recomputed
            after any parameter change (data pointer / version counter), ``train()``, ``load_state_dict`` and
            ``.to()``. In-place writes through ``param.data`` bypass the version counter: call :meth:`clear_cache`.
            Defaults to True.
        autocast_dtype (str, optional): Run the selector under autocast: ``'bfloat16'`` (CPU or GPU) or
            ``'float16'`` (GPU); outputs are fp32. ``None`` (default, official) = no autocast of its own.
        shortlist (int, optional): Two-step selector at inference only (not in the paper): the first layer runs on
            all C categories, the shared scorer ranks its outputs and only the best ``shortlist`` categories per
            image go through the remaining layers; the others get logit -inf. Training always runs the exact
            selector. ``None`` (default) = exact.
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
                 label_norm: Optional[bool] = None,
                 ffn_inner_dropout: bool = False,
                 chunk_size: Optional[int] = 1024,
                 checkpoint_chunks: bool = True,
                 cache_category_side: bool = True,
                 autocast_dtype: Optional[str] = None,
                 shortlist: Optional[int] = None,
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
        if label_norm is None:
            label_norm = not isinstance(self.relation, QVCategorySelfAttention)
        self.label_norm = nn.LayerNorm(embed_dims) if label_norm else None
        self.image_proj = nn.Linear(img_in_channels, kv_dims)
        self.layers = nn.ModuleList(
            QVCategoryCrossAttentionLayer(embed_dims, kv_dims, num_heads, ffn_dims, dropout, ffn_inner_dropout)
            for _ in range(num_layers))
        if autocast_dtype not in (None, 'bfloat16', 'float16'):
            raise ValueError(f"QVCategoryQuerySelector: autocast_dtype must be None, 'bfloat16' or 'float16', "
                             f'got {autocast_dtype!r}')
        if shortlist is not None and not (topk <= shortlist and num_layers >= 2):
            raise ValueError(f'QVCategoryQuerySelector: shortlist={shortlist} needs shortlist >= topk={topk} and '
                             f'num_layers >= 2 (got {num_layers})')
        self.chunk_size, self.checkpoint_chunks = chunk_size, checkpoint_chunks
        self.cache_category_side, self.autocast_dtype, self.shortlist = cache_category_side, autocast_dtype, shortlist
        self._cache = None
        self.scorer = nn.Linear(embed_dims, 1)
        # mmdet's GroundingDINO reads the width of the "text" tokens from here and maps them to the transformer
        # width with its own ``text_feat_map`` (Linear(D, 256), xavier, zero bias -- CQ-DINO's projection)
        self.language_backbone = SimpleNamespace(body=SimpleNamespace(language_dim=embed_dims))

    # ------------------------------------------------------------------ category side (image-independent)
    def clear_cache(self) -> None:
        """Drop the cached category side (see ``cache_category_side``)."""
        self._cache = None

    def train(self, mode: bool = True):
        self.clear_cache()
        return super().train(mode)

    def _apply(self, *args, **kwargs):
        self.clear_cache()
        return super()._apply(*args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.clear_cache()
        return super()._load_from_state_dict(*args, **kwargs)

    def _cache_key(self) -> tuple:
        tensors = list(self.parameters()) + list(self.buffers())
        return (torch.is_autocast_enabled(self.category_embed.device.type), ) + tuple(
            (t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)

    def _category_side(self) -> Tuple[Tensor, Tensor]:
        cats = torch.relu(self.wordvec_proj(self.category_embed))
        if self.relation is not None:
            cats = self.relation(cats)
        if self.label_norm is not None:
            cats = self.label_norm(cats)
        return cats, self.layers[0].project_query(cats)

    def category_queries(self) -> Tuple[Tensor, Tensor]:
        """Image-independent part: the category queries entering the tagging head (C, D) and their first-layer
        query projection (C, D). Once per forward; cached at inference (eval mode, no gradients)."""
        if self.training or torch.is_grad_enabled() or not self.cache_category_side:
            self._cache = None
            if self.training and torch.is_grad_enabled() and self.checkpoint_chunks:
                return checkpoint(self._category_side, use_reentrant=False)
            return self._category_side()
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            self._cache = None  # free the old one first
            self._cache = (key, self._category_side())
        return self._cache[1]

    # ------------------------------------------------------------------ tagging head
    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None or torch.is_autocast_enabled(device.type):
            return nullcontext()
        return torch.autocast(device.type, dtype=getattr(torch, self.autocast_dtype))

    def _image_kv(self, img_feat: Tensor) -> List[Tensor]:
        flat = img_feat.flatten(2).transpose(1, 2)  # (B, HW, C_img)
        kv = self.image_proj(torch.cat([flat.mean(1, keepdim=True), flat], dim=1))
        return [t for layer in self.layers for t in layer.project_kv(kv)]

    def _run(self, x: Tensor, q: Optional[Tensor], first: int, last: int, *kvs: Tensor) -> Tuple[Tensor, Tensor]:
        """Layers ``first..last-1`` on queries ``x`` ((L, D) shared or (B, L, D)); ``q`` = x's projection for layer
        ``first`` if known. -> scores (B, L), tokens (B, L, D)."""
        for i in range(first, last):
            layer = self.layers[i]
            x = layer.forward_projected(x, layer.project_query(x) if q is None or i != first else q,
                                        kvs[2 * i], kvs[2 * i + 1])
        return self.scorer(x).squeeze(-1), x

    def _chunk(self, x: Tensor, q: Optional[Tensor], kvs: List[Tensor], first: int = 0,
               last: Optional[int] = None) -> Tuple[Tensor, Tensor]:
        last = len(self.layers) if last is None else last
        if self.training and torch.is_grad_enabled() and self.checkpoint_chunks:
            return checkpoint(self._run, x, q, first, last, *kvs, use_reentrant=False)
        return self._run(x, q, first, last, *kvs)

    def _spans(self, n: int):
        step = self.chunk_size if self.chunk_size and self.chunk_size > 0 else n
        return [(s, min(s + step, n)) for s in range(0, n, step)]

    def _split(self, cats: Tensor, q0: Tensor):
        """Chunks as ``split`` views: in backward their gradients are concatenated once (slicing would give every
        chunk a zero-padded C x D gradient)."""
        spans = self._spans(cats.size(0))
        sizes = [e - s for s, e in spans]
        return spans, cats.split(sizes), q0.split(sizes)

    def forward(self, img_feat: Tensor, return_tokens: bool = True) -> Dict[str, Tensor]:
        """img_feat (B, C_img, H, W) -> ``logits`` (B, C) and, with ``return_tokens``, the image-conditioned
        ``tokens`` (B, C, D) of all categories (:meth:`forward_select` keeps only the selected ones)."""
        with self._autocast(img_feat.device):
            cats, q0 = self.category_queries()
            kvs = self._image_kv(img_feat)
            logits, tokens = [], []
            for (s, e), c, q in zip(*self._split(cats, q0)):
                lg, tok = self._chunk(c, q, kvs)
                logits.append(lg)
                if return_tokens:
                    tokens.append(tok)
        return dict(logits=torch.cat(logits, 1).float(), tokens=torch.cat(tokens, 1).float() if return_tokens else None)

    @staticmethod
    def _merge_top(best: Optional[tuple], scores: Tensor, index: Tensor, tokens: Tensor, k: int) -> tuple:
        """Running top-k over chunks: keep the k best (score, global index, token) per image."""
        top = scores.detach().topk(min(k, scores.size(1)), dim=1)
        cand = (top.values, torch.gather(index.expand_as(scores), 1, top.indices),
                torch.gather(tokens, 1, top.indices.unsqueeze(-1).expand(-1, -1, tokens.size(-1))))
        if best is None:
            return cand
        vals, idx, tok = (torch.cat([a, b], 1) for a, b in zip(best, cand))
        top = vals.topk(min(k, vals.size(1)), dim=1)
        return (top.values, torch.gather(idx, 1, top.indices),
                torch.gather(tok, 1, top.indices.unsqueeze(-1).expand(-1, -1, tok.size(-1))))

    def forward_select(self, img_feat: Tensor, gt_labels: Optional[List[Tensor]] = None) -> Dict[str, Tensor]:
        """Scoring and top-K selection in one chunked pass (equal to :meth:`forward` + :meth:`select`, without the
        B x C x D tokens): ``logits`` (B, C), ``indices`` (B, K) by descending score and their ``tokens`` (B, K, D).
        With ``force_gt_in_topk`` and ``gt_labels``, the forced categories' tokens are computed afterwards (their
        dropout masks in training differ from the scoring pass')."""
        k, b = self.topk, img_feat.size(0)
        with self._autocast(img_feat.device):
            cats, q0 = self.category_queries()
            kvs = self._image_kv(img_feat)
            two_step = self.shortlist is not None and not self.training
            logits, best = [], None
            for (s, e), c, q in zip(*self._split(cats, q0)):
                if two_step:  # first layer only, shortlist by the shared scorer
                    lg, tok = self._chunk(c, q, kvs, 0, 1)
                    best = self._merge_top(best, lg, torch.arange(s, e, device=lg.device), tok, self.shortlist)
                    continue
                lg, tok = self._chunk(c, q, kvs)
                logits.append(lg)
                best = self._merge_top(best, lg, torch.arange(s, e, device=lg.device), tok, k)
            if two_step:
                short_idx = best[1]
                lg, tok = self._chunk(best[2], None, kvs, 1)
                logits = torch.full((b, self.num_classes), float('-inf'), device=lg.device, dtype=lg.dtype)
                logits = logits.scatter(1, short_idx, lg)
                best = self._merge_top(None, lg, short_idx, tok, k)
            else:
                logits = torch.cat(logits, 1)
            _, indices, tokens = best
            if self.force_gt_in_topk and gt_labels is not None:
                forced = torch.stack([self._force(idx, gt) for idx, gt in zip(indices, gt_labels)])
                changed = forced != indices
                if changed.any():
                    _, extra = self._chunk(cats[forced], q0[forced], kvs)
                    tokens = torch.where(changed.unsqueeze(-1), extra, tokens)
                    indices = forced
        return dict(logits=logits.float(), indices=indices, tokens=tokens.float())

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
