from .clip_vision_tokens import QVCLIPVisionTokens

__all__ = ['QVCLIPVisionTokens']
