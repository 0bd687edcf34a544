"""LeGrad explainability maps (Bousselham et al., arXiv 2404.03214), implemented here from its definition.

For a ViT with L blocks and a target embedding t (a unit vector in the model's output space), for each explained
block l:

* z_l: the token sequence after block l, f_l = normalize(pool(z_l)) its pooled embedding in the output space
  (open_clip: ``ln_post`` of the mean over all tokens, CLS included, times ``proj``; DINOv2: the final LayerNorm of
  the mean over all tokens);
* s_l = <t, f_l>;  G_l = d s_l / d A_l, with A_l the block's post-softmax attention probabilities [B, heads, N, N];
* E_l = mean over heads and query rows of ReLU(G_l), keeping the patch-key columns -> a (h, w) map.

E = min-max(sum_l E_l), bilinearly upsampled to the input size. ``create_graph=True`` keeps the map differentiable
with respect to t (second order), which MaO's descriptor optimisation needs. :meth:`prepare` runs the encoder once
and keeps, for every explained block, its attention probabilities as leaves of the graph to the pooled embeddings;
:meth:`maps` can then be evaluated for many targets (one per image of the batch) without re-running the encoder;
``state['output']`` is the encoder's own embedding of the images from that same pass (``encode``).

Because G_l is linear in t, maps for a batch of targets cost one backward through the explained blocks only
(blocks before the first explained one run without gradients).
"""
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Layers = Union[str, int, Sequence[int]]


def _resolve_layers(layers: Layers, depth: int) -> List[int]:
    if layers == 'last':
        idx = [depth - 1]
    elif layers == 'last2':
        idx = [depth - 2, depth - 1]
    elif layers == 'all':
        idx = list(range(depth))
    elif isinstance(layers, int):
        idx = list(range(layers + depth if layers < 0 else layers, depth))   # official ``layer_index``: from l on
    else:
        idx = sorted({int(i) + depth if int(i) < 0 else int(i) for i in layers})
    if not idx or any(not 0 <= i < depth for i in idx):
        raise ValueError(f'LeGrad layers {layers!r} outside a {depth}-block ViT')
    return idx


def minmax(maps: Tensor, scope: str = 'per_map', eps: float = 1e-8) -> Tensor:
    """Min-max normalise [B, H, W] maps per map or jointly over the batch (the official MaO code)."""
    if scope == 'per_map':
        lo = maps.flatten(1).min(1).values.view(-1, 1, 1)
        hi = maps.flatten(1).max(1).values.view(-1, 1, 1)
    elif scope == 'batch':
        lo, hi = maps.min(), maps.max()
    else:
        raise ValueError(f"minmax scope must be 'per_map' or 'batch', got {scope!r}")
    return (maps - lo) / (hi - lo + eps)


class _LeGradBase(nn.Module):

    def __init__(self, layers: Layers = 'last', minmax_scope: str = 'per_map') -> None:
        super().__init__()
        self.layers_cfg, self.minmax_scope = layers, minmax_scope

    def prepare(self, images: Tensor) -> Dict[str, object]:
        raise NotImplementedError

    def maps(self, state: Dict[str, object], targets: Tensor, create_graph: bool = False,
             out_size: Optional[Sequence[int]] = None) -> Tensor:
        """[B, H, W] maps in [0, 1] for unit targets [B, D] (one per image of the prepared batch)."""
        attns: List[Tensor] = state['attns']
        feats: List[Tensor] = state['layer_embeds']
        if targets.shape != feats[0].shape:
            raise ValueError(f'LeGrad targets {tuple(targets.shape)} must match the pooled embeddings '
                             f'{tuple(feats[0].shape)}')
        h, w = state['grid']
        skip = state['prefix_tokens']
        total = 0
        for i, (a, f) in enumerate(zip(attns, feats)):
            s = (targets * f).sum()
            (g, ) = torch.autograd.grad(s, a, create_graph=create_graph, retain_graph=True)
            e = g.clamp(min=0).mean(dim=(1, 2))[:, skip:]          # heads, query rows; patch keys
            total = total + e.reshape(-1, h, w)
        out = total.unsqueeze(1)
        size = tuple(out_size) if out_size is not None else tuple(state['input_size'])
        out = F.interpolate(out, size=size, mode='bilinear', align_corners=False).squeeze(1)
        return minmax(out, self.minmax_scope)

    def forward(self, images: Tensor, targets: Tensor, create_graph: bool = False) -> Tensor:
        """Maps of ``images`` for ``targets`` in one call (``prepare`` + ``maps``)."""
        return self.maps(self.prepare(images), targets, create_graph=create_graph)


class LeGradOpenCLIP(_LeGradBase):
    """LeGrad for an open_clip ``VisionTransformer`` (the ``visual`` tower of ``open_clip.CLIP``).

    Args:
        visual: open_clip VisionTransformer (token pooling, ``ln_post`` then projection).
        layers: ``'last'`` (MaO), ``'last2'`` (LeGrad's default ``layer_index=-2``), ``'all'`` (the paper's
            aggregation), a start index, or a list of block indices.
        minmax_scope: ``'per_map'`` or ``'batch'``.
    """

    def __init__(self, visual: nn.Module, layers: Layers = 'last', minmax_scope: str = 'per_map') -> None:
        super().__init__(layers, minmax_scope)
        from ...utils.open_clip_loader import check_open_clip_private_api
        check_open_clip_private_api('LeGradOpenCLIP')  # prepare() calls visual._embeds / visual._pool
        blocks = visual.transformer.resblocks
        for i, blk in enumerate(blocks):
            attn = getattr(blk, 'attn', None)
            if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim or hasattr(blk, 'ln_1_kv'):
                raise TypeError(f'LeGradOpenCLIP: block {i} is not a standard open_clip ResidualAttentionBlock')
        if getattr(visual, 'attn_pool', None) is not None or not getattr(visual.transformer, 'batch_first', True):
            raise TypeError('LeGradOpenCLIP: attention-pooled or sequence-first towers are not supported')
        self.visual = visual
        self.layer_idx = _resolve_layers(layers, len(blocks))

    @staticmethod
    def block_forward(blk: nn.Module, x: Tensor, attn_probs: Optional[Tensor] = None):
        """One open_clip block with explicit attention; returns (output, attention probabilities [B, h, N, N]).

        With ``attn_probs`` given, those probabilities are used instead of the ones computed from ``x``.
        """
        attn: nn.MultiheadAttention = blk.attn
        b, n, d = x.shape
        heads = attn.num_heads
        q, k, v = F.linear(blk.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
        if attn_probs is None:
            attn_probs = torch.softmax((q * (d // heads) ** -0.5) @ k.transpose(-2, -1), dim=-1)
        o = (attn_probs @ v).transpose(1, 2).reshape(b, n, d)
        x = x + blk.ls_1(attn.out_proj(o))
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        return x, attn_probs

    def pooled(self, z: Tensor) -> Tensor:
        v = self.visual
        f = v.ln_post(z.mean(dim=1))
        return F.normalize(f @ v.proj if v.proj is not None else f, dim=-1)

    def encode(self, images: Tensor) -> Tensor:
        """The tower's own output embedding (CLS pooling + projection), unnormalised."""
        return self.visual(images)

    def prepare(self, images: Tensor) -> Dict[str, object]:
        v = self.visual
        first = self.layer_idx[0]
        with torch.no_grad():
            x = v._embeds(images)
            for blk in v.transformer.resblocks[:first]:
                x = blk(x)
        attns, embeds = [], []
        with torch.enable_grad():
            for i in range(first, len(v.transformer.resblocks)):
                blk = v.transformer.resblocks[i]
                if i in self.layer_idx:
                    with torch.no_grad():
                        _, a = self.block_forward(blk, x)
                    a = a.detach().requires_grad_(True)
                    x, _ = self.block_forward(blk, x, a)
                    attns.append(a)
                    embeds.append(self.pooled(x))
                else:
                    x, _ = self.block_forward(blk, x)
        with torch.no_grad():   # the tower's own embedding from the same pass (what ``encode`` returns)
            pooled = v._pool(x.detach())[0]
            output = pooled @ v.proj if v.proj is not None else pooled
        grid = v.grid_size if isinstance(v.grid_size, tuple) else (v.grid_size, v.grid_size)
        return dict(attns=attns, layer_embeds=embeds, grid=grid, prefix_tokens=1, input_size=images.shape[-2:],
                    output=output)


class LeGradDINOv2(_LeGradBase):
    """LeGrad for a Hugging Face ``Dinov2Model`` (pooled embedding = final LayerNorm of the token mean, no projection).

    The explained layers are asked for their attention probabilities (``output_attentions``), which makes
    transformers (< 4.50, pinned) compute them eagerly as graph tensors (load with ``attn_implementation='eager'``
    to avoid its SDPA fallback warning, as ``QVDINOv2CropEncoder`` does); register tokens, if any, are dropped from
    the map with the CLS token.
    """

    def __init__(self, model: nn.Module, layers: Layers = 'last', minmax_scope: str = 'per_map') -> None:
        super().__init__(layers, minmax_scope)
        self.model = model
        self.layer_idx = _resolve_layers(layers, len(model.encoder.layer))

    def pooled(self, z: Tensor) -> Tensor:
        return F.normalize(self.model.layernorm(z.mean(dim=1)), dim=-1)

    def encode(self, images: Tensor) -> Tensor:
        """The model's own descriptor: ``pooler_output`` (LayerNorm-ed CLS token)."""
        return self.model(pixel_values=images).pooler_output

    def prepare(self, images: Tensor) -> Dict[str, object]:
        m = self.model
        first = self.layer_idx[0]
        prefix = 1 + int(getattr(m.config, 'num_register_tokens', 0) or 0)
        with torch.no_grad():
            x = m.embeddings(images)
            for layer in m.encoder.layer[:first]:
                x = layer(x)[0]
        attns, embeds = [], []
        x = x.detach().requires_grad_(True)   # puts the (frozen) layers' attention probabilities in the graph
        with torch.enable_grad():
            for i in range(first, len(m.encoder.layer)):
                out = m.encoder.layer[i](x, output_attentions=i in self.layer_idx)
                x = out[0]
                if i in self.layer_idx:
                    attns.append(out[1])
                    embeds.append(self.pooled(x))
        with torch.no_grad():   # pooler_output of the same pass (what ``encode`` returns)
            output = m.layernorm(x.detach())[:, 0]
        patch = m.config.patch_size
        grid = (images.shape[-2] // patch, images.shape[-1] // patch)
        return dict(attns=attns, layer_embeds=embeds, grid=grid, prefix_tokens=prefix, input_size=images.shape[-2:],
                    output=output)
