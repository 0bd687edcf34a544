from .semi_detr import QVSemiDETR
from .semi_dino import QVSemiDINO

__all__ = ['QVSemiDETR', 'QVSemiDINO']
