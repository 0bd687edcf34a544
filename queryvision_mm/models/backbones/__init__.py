from .clip_vision_tokens import QVCLIPVisionTokens
from .efficientnet_lite import (QVEfficientNetLite, build_efficientnet_lite, convert_efficientnet_lite_to_timm,
                                find_efficientnet_lite_checkpoint)

__all__ = [
    'QVCLIPVisionTokens', 'QVEfficientNetLite', 'build_efficientnet_lite', 'convert_efficientnet_lite_to_timm',
    'find_efficientnet_lite_checkpoint'
]
