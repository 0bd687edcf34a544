"""Demo-data generators (not part of the runtime package; ``import queryvision_mm`` does not import them): synthetic
COCO-format shapes (Semi-DETR / Sparse Semi-DETR demos, :mod:`.demo_shapes`), a mini V3Det-format set (CQ-DINO demo,
:mod:`.demo_v3det`) and the QKS / MaO sets built from photos shipped inside installed packages (:mod:`.demo_photos`).
Each module runs as a script; ``tools/misc/make_demo_data.py`` is their CLI. They need numpy and Pillow only."""
from .demo_shapes import DEMO_CLASSES, generate_demo_shapes
from .demo_v3det import DEMO_V3DET_CLASSES, generate_demo_v3det

__all__ = ['DEMO_CLASSES', 'DEMO_V3DET_CLASSES', 'generate_demo_shapes', 'generate_demo_v3det']
