from .mao import QVMaODescriber
from .mao_components import (QVDINOv2CropEncoder, QVEfficientNetLiteCropEncoder, QVOpenCLIPCropEncoder,
                             QVOWLv2Objectness, QVSAMBoxMasks, build_sam_from_arch, crop_padded, square_crop_box)
from .mao_stage_a import QVMaOContrastiveModel, multi_object_info_nce
from .mao_retriever import QVMaODataPreprocessor, QVMaORetriever
from .mao_refiner import MaORefiner, refine_or_fallback, soft_dice_loss, soft_iou, whole_image_fallback

__all__ = ['MaORefiner', 'QVDINOv2CropEncoder', 'QVEfficientNetLiteCropEncoder', 'QVMaOContrastiveModel',
           'QVMaODataPreprocessor', 'QVMaODescriber', 'QVMaORetriever', 'QVOWLv2Objectness', 'QVOpenCLIPCropEncoder',
           'QVSAMBoxMasks', 'build_sam_from_arch', 'crop_padded', 'refine_or_fallback', 'soft_dice_loss', 'soft_iou',
           'multi_object_info_nce', 'square_crop_box', 'whole_image_fallback']
