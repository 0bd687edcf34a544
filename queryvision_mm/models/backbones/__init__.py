from ..._lazy import lazy_module_getattr
from .efficientnet_lite import (QVEfficientNetLite, build_efficientnet_lite, convert_efficientnet_lite_to_timm,
                                find_efficientnet_lite_checkpoint)

__all__ = ['QVEfficientNetLite', 'build_efficientnet_lite', 'convert_efficientnet_lite_to_timm',
           'find_efficientnet_lite_checkpoint']
# mmpretrain-based (QKS, MaO): imported on first access and by queryvision_mm.mmpretrain_plugin
__getattr__ = lazy_module_getattr(__name__, {'QVCLIPVisionTokens': '.clip_vision_tokens'})
