"""queryvision_mm: query-based vision papers as OpenMMLab (mmdet 3.3 / mmpretrain 1.2) plugins.

``import queryvision_mm`` is the detection plugin: it registers Semi-DETR, Sparse Semi-DETR and CQ-DINO into
mmdet's registries (scope ``mmdet``) and imports neither mmpretrain, transformers, open_clip nor scikit-image.
The classification / retrieval modules (QKS, MaO; mmpretrain's registries) are registered by
:mod:`queryvision_mm.mmpretrain_plugin`. Importing the package does not patch anything: the safe checkpoint-loading
shim (torch >= 2.6 ``weights_only``, :mod:`queryvision_mm.utils.checkpoint`) is applied explicitly, by importing
:mod:`queryvision_mm.safe_load` or calling :func:`setup_safe_checkpoint_loading`. Configs therefore list::

    # detection (configs/_base_/{semi_detr_*,cq_dino_*}.py)
    custom_imports = dict(imports=['queryvision_mm', 'queryvision_mm.safe_load'], allow_failed_imports=False)
    # QKS, MaO (configs/qks/nuswide_vitb16.py, configs/_base_/mao_voxdet.py)
    custom_imports = dict(imports=['queryvision_mm.mmpretrain_plugin', 'queryvision_mm.safe_load'],
                          allow_failed_imports=False)
"""
from .version import __version__  # noqa: F401
from .utils import setup_safe_checkpoint_loading  # noqa: F401  (the function only; not applied here)
from . import datasets, engine, evaluation, models, visualization  # noqa: F401,E402

__all__ = ['__version__', 'setup_safe_checkpoint_loading']
