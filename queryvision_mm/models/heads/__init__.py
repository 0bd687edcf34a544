from .qks_head import QVCLIPZeroShotHead, QVQKSHead

__all__ = ['QVCLIPZeroShotHead', 'QVQKSHead']
