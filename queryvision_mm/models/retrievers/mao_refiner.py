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

Batches of images (:meth:`MaORefiner.refine_batch`): the crops of several images go through the encoder and LeGrad
together, with one vector per image (per crop in code mode) and the sum of the images' losses. Each image's loss
depends only on its own vector and AdamW's update is element-wise, so this is the same optimisation as one image at
a time (tested), with bigger batches for the accelerator. Everything runs on the crops' device.

Precision: stage B always runs in fp32, with autocast disabled even inside an autocast region. It differentiates
LeGrad's map a second time (the gradient of a gradient of the attention), min-max normalises maps whose range can be
small, and takes 80 Adam steps of lr 0.1 on a unit vector from losses that differ in the 3rd-4th digit; half
precision (fp16: 10 mantissa bits, bf16: 7) puts rounding error of that size into every step. Measured on the demo
stand-ins (4 photos x 8 crops, 80 steps, CPU autocast): the bf16 / fp16 descriptors differ from fp32 by 1 - cos =
9e-4 to 1.0e-1 / 1e-3 to 1.9e-2, up to a quarter of how far stage B moves the vector (1 - cos 0.19-0.42). The cost
of fp32 is small: the encoder runs once per image, the iterations only touch the explained last block.
"""
import contextlib
import functools
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..layers.legrad import minmax


@functools.lru_cache(maxsize=64)
def _owner_cached(counts: tuple, device: torch.device) -> Tensor:
    return torch.tensor([b for b, c in enumerate(counts) for _ in range(c)], dtype=torch.long, device=device)


def _owner(counts: Sequence[int], device: torch.device) -> Tensor:
    """Image index of every crop ([N]) for images of ``counts`` crops, built once per batch and device."""
    return _owner_cached(tuple(counts), device)


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

    def loss(self, v: Tensor, state: Dict, crop_embeds: Tensor, masks: Tensor,
             counts: Optional[Sequence[int]] = None) -> Tensor:
        """Sum over the images of their objective; ``counts`` = crops per image (default: one image).

        ``v``: paper mode [B, D] (or [D] for one image), code mode [N, D]."""
        n = masks.shape[0]
        counts = [n] if counts is None else list(counts)
        v_hat = F.normalize(v, dim=-1)
        if self.mode == 'paper':
            v_img = v_hat[None] if v_hat.dim() == 1 else v_hat
            targets = v_img[_owner(counts, v.device)]
        else:
            targets = v_hat
        maps = self.explainer.maps(state, targets, create_graph=True, out_size=masks.shape[-2:])
        if self.mode == 'paper':
            crop_sums = torch.stack([c.sum(0) for c in crop_embeds.split(counts)])
            return (1 - soft_iou(maps, masks)).sum() - self.alpha * (v_img * crop_sums).sum()
        total = 0
        for m, mk, t, e in zip(maps.split(counts), masks.split(counts), targets.split(counts),
                               crop_embeds.split(counts)):
            m = minmax(m, 'batch')   # released code: joint min-max over the N maps of an image
            total = total + soft_dice_loss(m, mk).mean() + self.alpha * (1 - (t * e).sum(-1)).mean()
        return total

    def refine(self, crops: Tensor, masks: Tensor, return_history: bool = False):
        """crops [N, 3, S, S] (one image's object crops), masks [N, S, S] (or any size; maps are resized to it).

        Returns the L2-normalised descriptor [D] (paper, or code + merge='mean') or [N, D] (code), and with
        ``return_history`` also the loss per iteration.
        """
        out = self.refine_batch(crops, masks, [crops.shape[0]] if crops.dim() == 4 else [0], return_history)
        if return_history:
            return out[0][0], out[1]
        return out[0]

    def refine_batch(self, crops: Tensor, masks: Tensor, counts: Sequence[int], return_history: bool = False):
        """The crops of several images at once: ``counts[b]`` consecutive crops (and masks) belong to image b.

        Returns a list with, per image, what :meth:`refine` returns for it (and the summed loss per iteration).
        """
        counts = [int(c) for c in counts]
        if crops.dim() != 4 or masks.dim() != 3 or crops.shape[0] != masks.shape[0] or not counts or \
                min(counts) < 1 or sum(counts) != crops.shape[0]:
            raise ValueError(f'MaORefiner: need N >= 1 crops [N,3,S,S] and masks [N,H,W] per image, got '
                             f'{tuple(crops.shape)} and {tuple(masks.shape)} for images of {counts} crops')
        no_autocast = contextlib.nullcontext() if crops.device.type == 'meta' else \
            torch.autocast(crops.device.type, enabled=False)
        with no_autocast:     # fp32 (module docstring)
            crops = crops.float()
            masks = masks.to(device=crops.device, dtype=crops.dtype)
            state = self.explainer.prepare(crops)
            crop_embeds = F.normalize(state['output'].float(), dim=-1)   # the crops' embeddings, same pass
            if self.mode == 'paper':
                init = torch.stack([c.mean(0) for c in crop_embeds.split(counts)])
            else:
                init = crop_embeds
            v = init.clone().requires_grad_(True)
            opt = torch.optim.AdamW([v], lr=self.lr, weight_decay=0.0)
            history = []
            for _ in range(self.iters):
                loss = self.loss(v, state, crop_embeds, masks, counts)
                opt.zero_grad()
                # only v is optimised (encoder weights get no gradient); the encoder graph is reused every iteration
                (g, ) = torch.autograd.grad(loss, v, retain_graph=True)
                v.grad = g
                opt.step()
                if return_history:
                    history.append(loss.detach())
        history = torch.stack(history).tolist() if history else []   # one device sync, not one per step
        out = F.normalize(v.detach(), dim=-1)
        if self.mode == 'paper':
            results: List[Tensor] = list(out)
        else:
            results = list(out.split(counts))
            if self.merge == 'mean':
                results = [F.normalize(r.mean(0), dim=-1) for r in results]
        return (results, history) if return_history else results

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
