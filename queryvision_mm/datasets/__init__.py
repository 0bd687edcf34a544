from .category_hierarchy import CategoryHierarchy, HierarchyError
from .demo_shapes import DEMO_CLASSES, generate_demo_shapes

__all__ = ['CategoryHierarchy', 'DEMO_CLASSES', 'HierarchyError', 'generate_demo_shapes']
