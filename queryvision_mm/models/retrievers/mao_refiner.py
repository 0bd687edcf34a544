"""MaO stage B: multi-object attention optimisation of a gallery image's descriptor (arXiv 2503.07038).

Given the k object crops of one gallery image and their object masks, a descriptor v is optimised (encoder weights
untouched) so that LeGrad's explanation map of every crop, computed for v, covers that crop's object mask:

* ``mode='paper'`` (default): **one** vector per image, initialised to the mean of the crop embeddings v_i, loss
  sum_i (1 - softIoU(E_i(v), m_i)) - alpha <v_hat, sum_i v_hat_i>  (the paper's objective as a loss);
  output normalize(v) -- one descriptor per gallery image.
* ``mode='code'``: the released code's variant -- one vector per crop, initialised to its own embedding, loss
  mean_i [Dice(E_i(v_i), m_i)] + alpha * mean_i (1 - cos(v_i^0, v_i)), joint min-max over the batch of maps; output
  the N vectors (``merge='mean'`` averages them into one descriptor, as the code's ``avg_multiple_vecs``). Unlike the
  released code it works for any number of masks with the CLIP explainer (the released one breaks for more than one).

Defaults are the paper's: 80 AdamW iterations, lr 0.1, no weight decay, alpha 0.03, LeGrad on the last block. The
encoder runs once per image (:meth:`LeGrad.prepare`); each iteration only differentiates the explained blocks.
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..layers.legrad import minmax


def soft_iou(maps: Tensor, masks: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-map soft IoU of [N, H, W] maps in [0, 1] with [N, H, W] binary masks."""
    inter = (maps * masks).flatten(1).sum(1)
    union = maps.flatten(1).sum(1) + masks.flatten(1).sum(1) - inter
    return (inter + eps) / (union + eps)


def soft_dice_loss(maps: Tensor, masks: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-map 1 - soft Dice (the released code's mask loss)."""
    inter = (maps * masks).flatten(1).sum(1)
    return 1 - (2 * inter + eps) / (maps.flatten(1).sum(1) + masks.flatten(1).sum(1) + eps)


class MaORefiner:
    """Optimise gallery descriptors against object masks with LeGrad maps.

    Args:
        explainer: a ``LeGradOpenCLIP`` / ``LeGradDINOv2`` (its ``minmax_scope`` is used in paper mode).
        iters (int): AdamW iterations. Defaults to 80 (paper; the released config says 100).
        lr (float): Defaults to 0.1.
        alpha (float): regulariser weight. Defaults to 0.03.
        mode (str): ``'paper'`` or ``'code'`` (see the module docstring).
        merge (str): code mode only: ``'none'`` (N vectors) or ``'mean'`` (one).
    """

    def __init__(self, explainer, iters: int = 80, lr: float = 0.1, alpha: float = 0.03, mode: str = 'paper',
                 merge: str = 'none') -> None:
        if mode not in ('paper', 'code'):
            raise ValueError(f"MaORefiner mode must be 'paper' or 'code', got {mode!r}")
        if merge not in ('none', 'mean'):
            raise ValueError(f"MaORefiner merge must be 'none' or 'mean', got {merge!r}")
        self.explainer, self.iters, self.lr, self.alpha, self.mode, self.merge = \
            explainer, int(iters), float(lr), float(alpha), mode, merge

    def loss(self, v: Tensor, state: Dict, crop_embeds: Tensor, masks: Tensor) -> Tensor:
        n = masks.shape[0]
        v_hat = F.normalize(v, dim=-1)
        targets = v_hat.expand(n, -1) if v_hat.dim() == 1 else v_hat
        maps = self.explainer.maps(state, targets, create_graph=True, out_size=masks.shape[-2:])
        if self.mode == 'paper':
            return (1 - soft_iou(maps, masks)).sum() - self.alpha * (v_hat * crop_embeds.sum(0)).sum()
        maps = minmax(maps, 'batch')   # released code: joint min-max over the N maps
        return soft_dice_loss(maps, masks).mean() + self.alpha * (1 - (v_hat * crop_embeds).sum(-1)).mean()

    def refine(self, crops: Tensor, masks: Tensor, return_history: bool = False):
        """crops [N, 3, S, S] (one image's object crops), masks [N, S, S] (or any size; maps are resized to it).

        Returns the L2-normalised descriptor [D] (paper, or code + merge='mean') or [N, D] (code), and with
        ``return_history`` also the loss per iteration.
        """
        if crops.dim() != 4 or masks.dim() != 3 or crops.shape[0] != masks.shape[0] or crops.shape[0] == 0:
            raise ValueError(f'MaORefiner: need N >= 1 crops [N,3,S,S] and masks [N,H,W], got {tuple(crops.shape)} '
                             f'and {tuple(masks.shape)}')
        masks = masks.to(crops.dtype)
        state = self.explainer.prepare(crops)
        crop_embeds = F.normalize(state['output'].float(), dim=-1)   # the crops' embeddings, from the same pass
        init = crop_embeds.mean(0) if self.mode == 'paper' else crop_embeds
        v = init.clone().requires_grad_(True)
        opt = torch.optim.AdamW([v], lr=self.lr, weight_decay=0.0)
        history = []
        for _ in range(self.iters):
            loss = self.loss(v, state, crop_embeds, masks)
            opt.zero_grad()
            # only v is optimised (encoder weights get no gradient); the encoder graph is reused every iteration
            (g, ) = torch.autograd.grad(loss, v, retain_graph=True)
            v.grad = g
            opt.step()
            history.append(float(loss.detach()))
        out = F.normalize(v.detach(), dim=-1)
        if self.mode == 'code' and self.merge == 'mean':
            out = F.normalize(out.mean(0), dim=-1)
        return (out, history) if return_history else out

    def final_loss(self, crops: Tensor, masks: Tensor, descriptor: Tensor) -> float:
        """The objective at a given descriptor (for tests and diagnostics)."""
        state = self.explainer.prepare(crops)
        crop_embeds = F.normalize(state['output'].float(), dim=-1)
        return float(self.loss(descriptor.clone().requires_grad_(True), state, crop_embeds,
                               masks.to(crops.dtype)).detach())


def whole_image_fallback(explainer, image: Tensor) -> Tensor:
    """Descriptor of an image with no detected object: its plain global embedding (documented MaO fallback)."""
    with torch.no_grad():
        return F.normalize(explainer.encode(image[None] if image.dim() == 3 else image).float(), dim=-1)[0]


def refine_or_fallback(refiner: MaORefiner, crops: Optional[Tensor], masks: Optional[Tensor], image: Tensor) -> Tensor:
    """:meth:`MaORefiner.refine` when there are objects, else :func:`whole_image_fallback`."""
    if crops is None or crops.shape[0] == 0:
        return whole_image_fallback(refiner.explainer, image)
    return refiner.refine(crops, masks)
