from .semi_detr_head import QVSemiDETRHead

__all__ = ['QVSemiDETRHead']
