"""Models. Imported here (mmdet registries): the detectors, their heads, layers, losses, task modules and the
EfficientNet-Lite backbone. The classification / retrieval models (QKS, MaO; mmpretrain registries: ``backbones``'
CLIP tower, ``classifiers``, ``heads``, ``necks``, ``retrievers``) are imported by
:mod:`queryvision_mm.mmpretrain_plugin`; their names resolve here on first access (``queryvision_mm._lazy``)."""
from .backbones import *  # noqa: F401,F403
from .dense_heads import *  # noqa: F401,F403
from .detectors import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
from .task_modules import *  # noqa: F401,F403
from .._lazy import lazy_module_getattr

_MMPRETRAIN_SUBPACKAGES = ('.classifiers', '.heads', '.necks', '.retrievers')
__getattr__ = lazy_module_getattr(__name__, {'QVCLIPVisionTokens': '.backbones.clip_vision_tokens'},
                                  search=_MMPRETRAIN_SUBPACKAGES)
