"""queryvision_mm: query-based vision papers as OpenMMLab (mmdet 3.3 / mmpretrain 1.2) plugins.

Importing the package applies the safe checkpoint-loading shim (torch >= 2.6 ``weights_only``) and
registers every module into mmdet's registries (scope ``mmdet``); configs load it with
``custom_imports = dict(imports=['queryvision_mm'], allow_failed_imports=False)``.
"""
from .version import __version__  # noqa: F401
from .utils import setup_safe_checkpoint_loading  # noqa: F401  (applies the shim on import)
from . import datasets, engine, evaluation, models, visualization  # noqa: F401,E402

__all__ = ['__version__', 'setup_safe_checkpoint_loading']
