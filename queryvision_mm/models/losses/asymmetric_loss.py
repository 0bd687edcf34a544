"""Asymmetric loss (ASL, Ridnik et al., ICCV 2021) with the focusing weight detached, shared by CQ-DINO's
category selector and QKS's multi-label classifier."""
from typing import Optional

import torch
from torch import Tensor, nn

from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS as MMDET_MODELS


def asymmetric_loss(pred: Tensor,
                    target: Tensor,
                    gamma_pos: float = 0.0,
                    gamma_neg: float = 4.0,
                    clip: float = 0.05,
                    eps: float = 1e-8,
                    detach_focal_weight: bool = True) -> Tensor:
    r"""Element-wise ASL on logits.

    With :math:`p = \sigma(x)` (logits clamped to [-88, 88]), :math:`y = \mathrm{clamp}(t, 0, 1)` and the shifted
    negative probability :math:`p_m = \max(p - m, 0)` (``clip`` = m):

    .. math::
        L = -\,y\,(1-p)^{\gamma_+}\log \max(p, \epsilon) \;-\; (1-y)\,p_m^{\gamma_-}\log \max(1 - p_m, \epsilon)

    ``detach_focal_weight=True`` computes the focusing factors without gradient, as the original ASL code does
    (mmpretrain's ``AsymmetricLoss`` back-propagates through them: same value, different gradient).

    Returns:
        Tensor: the loss, same shape as ``pred``; non-finite values are replaced by 0.
    """
    assert pred.shape == target.shape, f'pred {tuple(pred.shape)} and target {tuple(target.shape)} differ'
    y = target.to(pred.dtype).clamp(0, 1)
    p = pred.clamp(-88, 88).sigmoid()
    p_neg = p - clip if clip and clip > 0 else p
    p_neg = p_neg.clamp(min=0)
    log_pos = torch.log(p.clamp(min=eps))
    log_neg = torch.log((1 - p_neg).clamp(min=eps))
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_focal_weight):
        w_pos = (1 - p).pow(gamma_pos)
        w_neg = p_neg.pow(gamma_neg)
    loss = -(y * w_pos * log_pos + (1 - y) * w_neg * log_neg)
    return torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0)


class QVAsymmetricLoss(nn.Module):
    """ASL module (registered in mmdet's and, when installed, mmpretrain's ``MODELS``).

    Args:
        gamma_pos / gamma_neg (float): focusing exponents (QKS NUS-WIDE 0 / 4; CQ-DINO V3Det 0 / 7).
        clip (float): probability margin of negatives (QKS 0; CQ-DINO 0.05).
        eps (float): lower clamp inside the logarithms (QKS 1e-5; CQ-DINO 1e-8).
        detach_focal_weight (bool): no gradient through the focusing factors (original ASL). Defaults to True.
        reduction (str): 'none' | 'mean' | 'sum'. Defaults to 'mean'.
        loss_weight (float): multiplier (QKS uses 1000 with 'mean'). Defaults to 1.0.
    """

    def __init__(self, gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float = 0.05, eps: float = 1e-8,
                 detach_focal_weight: bool = True, reduction: str = 'mean', loss_weight: float = 1.0) -> None:
        super().__init__()
        assert reduction in ('none', 'mean', 'sum'), f'unknown reduction {reduction!r}'
        self.gamma_pos, self.gamma_neg, self.clip, self.eps = gamma_pos, gamma_neg, clip, eps
        self.detach_focal_weight = detach_focal_weight
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                avg_factor: Optional[float] = None, reduction_override: Optional[str] = None) -> Tensor:
        reduction = reduction_override or self.reduction
        loss = asymmetric_loss(pred, target, self.gamma_pos, self.gamma_neg, self.clip, self.eps,
                               self.detach_focal_weight)
        if weight is not None and weight.dim() == 1 and loss.dim() > 1:
            weight = weight[:, None]
        return self.loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)


MMDET_MODELS.register_module(module=QVAsymmetricLoss)
# classification/retrieval configs (default_scope='mmpretrain') find it under the same name once
# queryvision_mm/mmpretrain_plugin.py has registered it in mmpretrain's MODELS.
