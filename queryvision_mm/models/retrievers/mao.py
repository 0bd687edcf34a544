"""MaO descriptors: one vector per gallery image from its detected objects, one per query from its object box.

Gallery image -> OWLv2 objectness boxes -> SAM masks -> object-centred square crops (side max(w, h, min_crop_size),
zero-padded at the border, min_crop_size = the encoder's input size by default, the paper's rule) -> crop encoder ->
stage B (LeGrad-guided optimisation of one vector against all object masks, :class:`MaORefiner`) or, with
``refine=None``, the mean of the L2-normalised crop embeddings (stage-A style). An image without any detected object
gets its whole-image embedding (``fallback=True`` in the result). Without a mask model the object masks are the boxes
(filled rectangles). Gallery images are never cropped by ground truth.

Query -> square crop of side max(w, h) centred on its box, zero-padded (the official query crop) -> plain embedding.
"""
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from mmpretrain.registry import MODELS

from .mao_components import crop_padded, resize_masks, square_crop_box
from .mao_refiner import MaORefiner


@MODELS.register_module()
class QVMaODescriber:
    """Builds the per-image descriptors of MaO from config dicts (all models local; see ``configs/mao``).

    Args:
        encoder (dict): ``QVOpenCLIPCropEncoder`` or ``QVDINOv2CropEncoder``.
        proposals (dict, optional): ``QVOWLv2Objectness``; None treats every image as object-less.
        masks (dict, optional): ``QVSAMBoxMasks``; None uses box masks.
        refine (dict, optional): ``MaORefiner`` arguments plus ``layers`` (LeGrad blocks, MaO: ``'last'``) and
            ``minmax_scope``; None = mean of crop embeddings (no stage B).
        min_crop_size (int, optional): defaults to the encoder's input size.
    """

    def __init__(self, encoder: dict, proposals: Optional[dict] = None, masks: Optional[dict] = None,
                 refine: Optional[dict] = None, min_crop_size: Optional[int] = None) -> None:
        self.encoder = MODELS.build(encoder) if isinstance(encoder, dict) else encoder
        self.proposals = MODELS.build(proposals) if isinstance(proposals, dict) else proposals
        self.masks = MODELS.build(masks) if isinstance(masks, dict) else masks
        self.min_crop_size = int(min_crop_size if min_crop_size is not None else self.encoder.input_size)
        self.refiner = None
        if refine is not None:
            refine = dict(refine)
            layers = refine.pop('layers', 'last')
            scope = refine.pop('minmax_scope', 'per_map')
            self.refiner = MaORefiner(self.encoder.explainer(layers=layers, minmax_scope=scope), **refine)

    def object_crops(self, image: np.ndarray, boxes: torch.Tensor, masks: Optional[torch.Tensor]):
        crops, crop_masks = [], []
        for i, box in enumerate(boxes.tolist()):
            cbox = square_crop_box(box, self.min_crop_size)
            crops.append(crop_padded(image, cbox))
            if masks is not None:
                m = masks[i].cpu().numpy().astype(np.uint8)
            else:
                m = np.zeros(image.shape[:2], np.uint8)
                x0, y0, x1, y1 = (int(round(v)) for v in box)
                m[max(y0, 0):y1, max(x0, 0):x1] = 1
            crop_masks.append(crop_padded(m, cbox))
        return crops, crop_masks

    def describe_gallery(self, image: np.ndarray) -> Dict[str, object]:
        """image: HWC uint8 RGB. Returns descriptor (float32 [D], unit), boxes, scores, masks, fallback."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f'expected an HxWx3 uint8 RGB image, got {image.shape} {image.dtype}')
        if self.proposals is not None:
            boxes, scores = self.proposals(image)
        else:
            boxes, scores = torch.zeros(0, 4), torch.zeros(0)
        if len(boxes) == 0:
            desc = self.encoder.embed([image])[0]
            return dict(descriptor=desc.numpy().astype(np.float32), boxes=boxes, scores=scores, masks=None,
                        fallback=True)
        masks = self.masks(image, boxes) if self.masks is not None else None
        crops, crop_masks = self.object_crops(image, boxes, masks)
        if self.refiner is None:
            desc = F.normalize(self.encoder.embed(crops).mean(0), dim=-1)
        else:
            x = self.encoder.preprocess(crops)
            desc = self.refiner.refine(x, resize_masks(crop_masks, self.encoder.input_size))
            if desc.dim() == 2:
                raise ValueError("a gallery needs one descriptor per image: use refine mode='paper' or "
                                 "mode='code' with merge='mean'")
        return dict(descriptor=desc.detach().numpy().astype(np.float32), boxes=boxes, scores=scores, masks=masks,
                    fallback=False)

    def describe_query(self, image: np.ndarray, box) -> np.ndarray:
        """The query object's descriptor (square crop of side max(w, h) around ``box``, zero-padded)."""
        crop = crop_padded(image, square_crop_box(box, 0))
        return self.encoder.embed([crop])[0].numpy().astype(np.float32)
