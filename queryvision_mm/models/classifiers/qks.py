"""QKS classifier: mmpretrain's ImageClassifier whose head starts from the backbone's CLIP projection."""
from torch import nn

from mmpretrain.models.classifiers import ImageClassifier
from mmpretrain.registry import MODELS


@MODELS.register_module()
class QVQKSClassifier(ImageClassifier):
    """``backbone`` (frozen CLIP tokens, :class:`QVCLIPVisionTokens`) -> ``neck`` (:class:`QVQFormerNeck`) ->
    ``head`` (:class:`QVQKSHead`, or :class:`QVCLIPZeroShotHead` without a neck). At construction the head's
    projection is set from CLIP's visual projection (trainable copy in QKS, fixed buffer in the zero-shot head)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        clip_proj = getattr(self.backbone, 'clip_proj', None)
        if clip_proj is None or clip_proj.numel() == 0:
            raise ValueError('QVQKSClassifier: the backbone exposes no CLIP projection (clip_proj)')
        proj = self.head.proj
        if tuple(proj.shape) not in ((0, ), tuple(clip_proj.shape)):
            raise ValueError(f'QVQKSClassifier: head projection {tuple(proj.shape)} vs CLIP {tuple(clip_proj.shape)}')
        if isinstance(proj, nn.Parameter):
            proj.data.copy_(clip_proj)
        else:
            self.head.proj = clip_proj.clone()

    def init_weights(self) -> None:
        proj = self.head.proj.detach().clone()
        super().init_weights()
        self.head.proj.data.copy_(proj)  # keep CLIP's projection as the starting point
