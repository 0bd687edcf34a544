from .category_hierarchy import CategoryHierarchy, HierarchyError
from .demo_shapes import DEMO_CLASSES, generate_demo_shapes
from .demo_v3det import DEMO_V3DET_CLASSES, generate_demo_v3det
from .loading import QVLoadImageFromFile
from .soir import QVSoIRDataset, QVSoIRPairDataset, load_soir_annotations, qv_scene_collate
from .soir_retrieval import QVSoIRRetrievalDataset
from .zsl_multilabel import QVZSLMultiLabelDataset

__all__ = ['CategoryHierarchy', 'DEMO_CLASSES', 'DEMO_V3DET_CLASSES', 'HierarchyError', 'generate_demo_shapes',
           'generate_demo_v3det', 'QVLoadImageFromFile', 'QVSoIRDataset', 'QVSoIRPairDataset',
           'QVSoIRRetrievalDataset',
           'QVZSLMultiLabelDataset', 'load_soir_annotations', 'qv_scene_collate']
