from .semi_detr import QVSemiDETR
from .semi_dino import QVSemiDINO
from .sparse_semi_detr import QVSparseSemiDETR

__all__ = ['QVSemiDETR', 'QVSemiDINO', 'QVSparseSemiDETR']
