from .amp_optim_wrapper import QVAmpOptimWrapper

__all__ = ['QVAmpOptimWrapper']
