from .demo_shapes import DEMO_CLASSES, generate_demo_shapes

__all__ = ['DEMO_CLASSES', 'generate_demo_shapes']
