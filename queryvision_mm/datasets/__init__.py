"""Datasets and transforms. Imported here: what detection uses (``CategoryHierarchy``, ``QVLoadImageFromFile``).
The mmpretrain datasets (QKS's ``QVZSLMultiLabelDataset``, MaO's SoIR datasets) are imported by
:mod:`queryvision_mm.mmpretrain_plugin` and resolve here on first access. The demo-data generators live in
:mod:`queryvision_mm.testing.demo_data` (not part of the runtime package)."""
from .._lazy import lazy_module_getattr
from .category_hierarchy import CategoryHierarchy, HierarchyError
from .loading import QVLoadImageFromFile

__all__ = ['CategoryHierarchy', 'HierarchyError', 'QVLoadImageFromFile']
__getattr__ = lazy_module_getattr(__name__, {
    'QVSoIRDataset': '.soir', 'QVSoIRPairDataset': '.soir', 'load_soir_annotations': '.soir',
    'qv_scene_collate': '.soir', 'QVSoIRRetrievalDataset': '.soir_retrieval',
    'QVZSLMultiLabelDataset': '.zsl_multilabel'
})
