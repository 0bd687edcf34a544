"""Frozen open_clip vision transformer that returns every token after ``ln_post`` (QKS, MaO)."""
from typing import Optional, Tuple

import torch
from mmengine.model import BaseModule
from torch import Tensor

from mmpretrain.registry import MODELS

from ...utils.open_clip_loader import load_open_clip


@MODELS.register_module()
class QVCLIPVisionTokens(BaseModule):
    """The image tower of an open_clip CLIP ViT, loaded from local files only, returning all post-``ln_post`` tokens
    ``(B, 1 + HW, width)`` (CLS first) -- not the pooled, projected embedding.

    CLIP's visual projection (``width x embed_dim``) is taken out of the tower and kept as the buffer ``clip_proj``
    for heads that start from it (QKS makes a trainable copy; the zero-shot head uses it as is).

    Args:
        model_name (str): open_clip model name (``'ViT-B-16-quickgelu'`` for OpenAI's weights, which use QuickGELU)
            or ``'local-dir:/folder'``.
        pretrained (str, optional): Local weights file for a built-in name (e.g. the ``open_clip_pytorch_model.bin``
            of ``timm/vit_base_patch16_clip_224.openai``). None needs ``allow_random_weights=True`` (tests).
        frozen (bool): No gradients and eval mode for the whole tower. Defaults to True (QKS, MaO).
        keep_cls_token (bool): Return the CLS token first (QKS default). Defaults to True.
        allow_random_weights (bool): Permit a built-in name without weights. Defaults to False.
    """

    def __init__(self, model_name: str = 'ViT-B-16-quickgelu', pretrained: Optional[str] = None, frozen: bool = True,
                 keep_cls_token: bool = True, allow_random_weights: bool = False, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if pretrained is None and not model_name.startswith('local-dir:') and not allow_random_weights:
            raise ValueError(f'QVCLIPVisionTokens: {model_name} without pretrained weights would be random; pass a '
                             'local weights file (or allow_random_weights=True in tests)')
        from open_clip.transformer import VisionTransformer
        model, _, _ = load_open_clip(model_name, pretrained=pretrained)
        visual = model.visual
        if not isinstance(visual, VisionTransformer):
            raise TypeError(f'QVCLIPVisionTokens needs a ViT image tower, {model_name} has {type(visual).__name__}')
        if visual.attn_pool is not None or getattr(visual, 'final_ln_after_pool', False):
            raise ValueError(f'{model_name}: attention-pooled / pool-then-LN towers are not supported')
        proj = visual.proj
        self.register_buffer('clip_proj', proj.detach().clone() if proj is not None else torch.empty(0))
        visual.proj = None
        self.visual = visual
        self.width = visual.transformer.width
        self.frozen, self.keep_cls_token = frozen, keep_cls_token
        if frozen:
            self.visual.requires_grad_(False)
            self.visual.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.visual.eval()
        return self

    def init_weights(self) -> None:
        pass  # the weights come from the CLIP checkpoint

    def forward(self, x: Tensor) -> Tuple[Tensor]:
        v = self.visual
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            # open_clip's public forward_intermediates: the last block's tokens after ln_post, CLS split off
            out = v.forward_intermediates(x, indices=1, normalize_intermediates=True, intermediates_only=True,
                                          output_fmt='NLC', output_extra_tokens=True)
            tokens = torch.cat([out['image_intermediates_prefix'][-1], out['image_intermediates'][-1]], dim=1)
        return (tokens if self.keep_cls_token else tokens[:, 1:], )
