import numpy as np
import pytest
import torch

from mmdet.registry import MODELS
from queryvision_mm.models.losses import QVAsymmetricLoss, asymmetric_loss


def numpy_asl(x, y, gp, gn, clip, eps):
    p = 1 / (1 + np.exp(-np.clip(x, -88, 88)))
    pm = np.maximum(p - clip, 0) if clip > 0 else p
    return -(y * (1 - p) ** gp * np.log(np.maximum(p, eps)) + (1 - y) * pm ** gn * np.log(np.maximum(1 - pm, eps)))


@pytest.mark.parametrize('gp,gn,clip,eps', [(0, 4, 0.0, 1e-5), (0, 7, 0.05, 1e-8), (1, 4, 0.05, 1e-8), (0, 0, 0, 1e-8)])
def test_value_matches_formula(gp, gn, clip, eps):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 11, generator=gen, dtype=torch.float64) * 3
    y = (torch.rand(6, 11, generator=gen) > 0.7).double()
    out = asymmetric_loss(x, y, gp, gn, clip, eps)
    np.testing.assert_allclose(out.numpy(), numpy_asl(x.numpy(), y.numpy(), gp, gn, clip, eps), rtol=1e-10)


def test_gamma_zero_is_bce():
    x = torch.randn(4, 5)
    y = (torch.rand(4, 5) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction='none')
    torch.testing.assert_close(asymmetric_loss(x, y, 0, 0, 0, 1e-12), bce, rtol=1e-5, atol=1e-6)


def test_detached_focal_weight_gradient():
    """d/dx of -w*log(p) with w constant is -w*(1-p) for positives, +w*p for negatives (clip 0)."""
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(50) > 0.5).double()
    asymmetric_loss(x, y, 1.0, 4.0, 0.0, 1e-12, detach_focal_weight=True).sum().backward()
    p = x.detach().sigmoid()
    expected = torch.where(y > 0, -(1 - p) ** 1.0 * (1 - p), p ** 4.0 * p)
    torch.testing.assert_close(x.grad, expected)


def test_not_detached_equals_mmpretrain():
    from mmpretrain.models.losses import AsymmetricLoss
    x1 = torch.randn(8, 20, dtype=torch.float64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y = (torch.rand(8, 20) > 0.8).double()
    ours = QVAsymmetricLoss(gamma_pos=1.0, gamma_neg=4.0, clip=0.05, eps=1e-8, detach_focal_weight=False,
                            reduction='sum')(x1, y)
    ref = AsymmetricLoss(gamma_pos=1.0, gamma_neg=4.0, clip=0.05, eps=1e-8, reduction='sum')(x2, y)
    torch.testing.assert_close(ours, ref)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    # detaching the focal weight keeps the value and changes the gradient
    x3 = x1.detach().clone().requires_grad_(True)
    det = QVAsymmetricLoss(gamma_pos=1.0, gamma_neg=4.0, clip=0.05, eps=1e-8, reduction='sum')(x3, y)
    torch.testing.assert_close(det, ours.detach())
    det.backward()
    assert not torch.allclose(x3.grad, x1.grad)


def test_reduction_weight_and_registries():
    x = torch.tensor([[100.0, -100.0, float('nan')]])
    y = torch.tensor([[1.0, 0.0, 1.0]])
    out = QVAsymmetricLoss(reduction='none')(x, y)
    assert torch.isfinite(out).all()
    loss = MODELS.build(dict(type='QVAsymmetricLoss', gamma_neg=4.0, clip=0.0, reduction='mean', loss_weight=1000.0))
    x = torch.randn(3, 4)
    y = (torch.rand(3, 4) > 0.5).float()
    torch.testing.assert_close(loss(x, y), 1000 * asymmetric_loss(x, y, 0, 4, 0, 1e-8).mean())
    import queryvision_mm.mmpretrain_plugin  # noqa: F401  (registers it in mmpretrain's MODELS too)
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    assert PRETRAIN_MODELS.get('QVAsymmetricLoss') is QVAsymmetricLoss
