from .qformer import QVQFormerNeck

__all__ = ['QVQFormerNeck']
