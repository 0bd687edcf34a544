from .mao_refiner import MaORefiner, refine_or_fallback, soft_dice_loss, soft_iou, whole_image_fallback

__all__ = ['MaORefiner', 'refine_or_fallback', 'soft_dice_loss', 'soft_iou', 'whole_image_fallback']
