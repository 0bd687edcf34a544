from .cq_dino_head import QVCQDINOHead, slot_scores
from .semi_detr_head import QVSemiDETRHead

__all__ = ['QVCQDINOHead', 'QVSemiDETRHead', 'slot_scores']
