from .asymmetric_loss import QVAsymmetricLoss, asymmetric_loss

__all__ = ['QVAsymmetricLoss', 'asymmetric_loss']
