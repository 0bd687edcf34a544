from .exponential_decay import QVExponentialDecayLR

__all__ = ['QVExponentialDecayLR']
