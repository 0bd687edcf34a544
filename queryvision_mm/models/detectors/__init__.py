from .cq_dino import QVCQDINO
from .semi_detr import QVSemiDETR
from .semi_dino import QVSemiDINO
from .sparse_semi_detr import QVSparseSemiDETR

__all__ = ['QVCQDINO', 'QVSemiDETR', 'QVSemiDINO', 'QVSparseSemiDETR']
