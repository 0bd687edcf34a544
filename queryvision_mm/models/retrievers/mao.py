"""MaO descriptors: one vector per gallery image from its detected objects, one per query from its object box.

Gallery image -> OWLv2 objectness boxes -> SAM masks -> object-centred square crops (side max(w, h, min_crop_size),
zero-padded at the border, min_crop_size = the encoder's input size by default, the paper's rule) -> crop encoder ->
stage B (LeGrad-guided optimisation of one vector against all object masks, :class:`MaORefiner`) or, with
``refine=None``, the mean of the L2-normalised crop embeddings (stage-A style). An image without any detected object
gets its whole-image embedding (``fallback=True`` in the result). Without a mask model the object masks are the boxes
(filled rectangles). Gallery images are never cropped by ground truth.

Query -> square crop of side max(w, h) centred on its box, zero-padded (the official query crop) -> plain embedding.

Devices and batches: ``device`` ('cpu' | 'cuda' | 'cuda:N' | 'auto') places every model of the pipeline (OWLv2,
SAM, the encoder, and with it LeGrad and stage B, which use the encoder's own modules); the images of a batch
(:meth:`QVMaODescriber.describe_gallery_batch`) go through OWLv2 and SAM's image encoder in one forward each, the
crops of all of them through the encoder (or stage B, up to ``refine_max_crops`` crops per call) together. Results are
returned on the CPU (descriptors as numpy). ``amp`` ('fp16' | 'bf16') autocasts OWLv2, SAM and the plain crop/query
embeddings; stage B stays fp32 (see ``mao_refiner``).
"""
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmpretrain.registry import MODELS

from .mao_components import (check_amp, crop_padded, module_device, resize_masks, resolve_device,
                             square_crop_box)
from .mao_refiner import MaORefiner


@MODELS.register_module()
class QVMaODescriber(nn.Module):
    """Builds the per-image descriptors of MaO from config dicts (all models local; see ``configs/mao``).

    Args:
        encoder (dict): ``QVOpenCLIPCropEncoder`` or ``QVDINOv2CropEncoder``.
        proposals (dict, optional): ``QVOWLv2Objectness``; None treats every image as object-less.
        masks (dict, optional): ``QVSAMBoxMasks``; None uses box masks.
        refine (dict, optional): ``MaORefiner`` arguments plus ``layers`` (LeGrad blocks, MaO: ``'last'``) and
            ``minmax_scope``; None = mean of crop embeddings (no stage B).
        min_crop_size (int, optional): defaults to the encoder's input size.
        device (str, optional): ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or ``'auto'``, for every model (None: leave
            them where they are, the CPU unless a component's own ``device`` says otherwise).
        amp (str, optional): ``'fp16'`` / ``'bf16'`` autocast of the no-gradient forwards (not stage B).
        refine_max_crops (int): stage B treats whole images together up to this many crops per call.
        batch_size (int): gallery images per :meth:`describe_gallery_batch` call in ``tools/mao/extract.py``.
    """

    def __init__(self, encoder: dict, proposals: Optional[dict] = None, masks: Optional[dict] = None,
                 refine: Optional[dict] = None, min_crop_size: Optional[int] = None, device=None,
                 amp: Optional[str] = None, refine_max_crops: int = 64, batch_size: int = 8) -> None:
        super().__init__()
        self.encoder = MODELS.build(encoder) if isinstance(encoder, dict) else encoder
        self.proposals = MODELS.build(proposals) if isinstance(proposals, dict) else proposals
        self.masks = MODELS.build(masks) if isinstance(masks, dict) else masks
        self.min_crop_size = int(min_crop_size if min_crop_size is not None else self.encoder.input_size)
        self.refine_max_crops, self.batch_size = int(refine_max_crops), int(batch_size)
        self.refiner = None
        if refine is not None:
            refine = dict(refine)
            layers = refine.pop('layers', 'last')
            scope = refine.pop('minmax_scope', 'per_map')
            self.refiner = MaORefiner(self.encoder.explainer(layers=layers, minmax_scope=scope), **refine)
        self.amp = check_amp(amp, 'QVMaODescriber.amp')
        if amp is not None:       # the pipeline's setting wins over the components' own
            for m in self.components():
                m.amp = self.amp
        self.eval()
        if device is not None:    # None: where the components are (loaded on the CPU unless they say otherwise)
            self.to(resolve_device(device, 'QVMaODescriber.device'))

    def components(self) -> List[nn.Module]:
        return [m for m in (self.encoder, self.proposals, self.masks) if m is not None]

    @property
    def device(self) -> torch.device:
        return module_device(self.encoder)

    def train(self, mode: bool = True):
        """The models are inference-only here: the describer always stays in eval mode."""
        return super().train(False)

    # ------------------------------------------------------------------------------------------------- crops
    def object_crops(self, image: np.ndarray, boxes: torch.Tensor, masks: Optional[torch.Tensor]):
        crops, crop_masks = [], []
        masks_np = masks.cpu().numpy().astype(np.uint8) if masks is not None else None
        for i, box in enumerate(boxes.tolist()):
            cbox = square_crop_box(box, self.min_crop_size)
            crops.append(crop_padded(image, cbox))
            if masks_np is not None:
                m = masks_np[i]
            else:
                m = np.zeros(image.shape[:2], np.uint8)
                x0, y0, x1, y1 = (int(round(v)) for v in box)
                m[max(y0, 0):y1, max(x0, 0):x1] = 1
            crop_masks.append(crop_padded(m, cbox))
        return crops, crop_masks

    # ------------------------------------------------------------------------------------------------- gallery
    def describe_gallery(self, image: np.ndarray) -> Dict[str, object]:
        """image: HWC uint8 RGB. Returns descriptor (float32 [D], unit), boxes, scores, masks, fallback."""
        return self.describe_gallery_batch([image])[0]

    def describe_gallery_batch(self, images: Sequence[np.ndarray]) -> List[Dict[str, object]]:
        """:meth:`describe_gallery` of several images, each model called once per batch (see module docstring).
        Descriptors are numpy float32, boxes / scores / masks CPU tensors."""
        for i, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f'expected an HxWx3 uint8 RGB image, got {image.shape} {image.dtype} (image {i})')
        images = list(images)
        if self.proposals is not None:
            props = self.proposals.forward_batch(images)
        else:
            props = [(torch.zeros(0, 4), torch.zeros(0)) for _ in images]
        with_objects = [i for i, (b, _) in enumerate(props) if len(b)]
        masks: List[Optional[torch.Tensor]] = [None] * len(images)
        if self.masks is not None and with_objects:
            for i, m in zip(with_objects, self.masks.forward_batch([images[i] for i in with_objects],
                                                                    [props[i][0] for i in with_objects])):
                masks[i] = m
        descs: List[Optional[torch.Tensor]] = [None] * len(images)
        fallback = [i for i in range(len(images)) if not len(props[i][0])]
        if fallback:
            for i, d in zip(fallback, self.encoder.embed([images[i] for i in fallback])):
                descs[i] = d
        crops, crop_masks, counts = [], [], []
        for i in with_objects:
            c, m = self.object_crops(images[i], props[i][0], masks[i])
            crops += c
            crop_masks += m
            counts.append(len(c))
        if with_objects and self.refiner is None:
            emb = self.encoder.embed(crops)
            for i, e in zip(with_objects, emb.split(counts)):
                descs[i] = F.normalize(e.mean(0), dim=-1)
        elif with_objects:
            if self.refiner.mode == 'code' and self.refiner.merge != 'mean':
                raise ValueError("a gallery needs one descriptor per image: use refine mode='paper' or "
                                 "mode='code' with merge='mean'")
            start = 0
            for group in self._refine_groups(counts):
                n = sum(counts[g] for g in group)
                x = self.encoder.preprocess(crops[start:start + n])
                m = resize_masks(crop_masks[start:start + n], self.encoder.input_size, x.device)
                for g, d in zip(group, self.refiner.refine_batch(x, m, [counts[g] for g in group])):
                    descs[with_objects[g]] = d
                start += n
        return [dict(descriptor=descs[i].detach().cpu().numpy().astype(np.float32), boxes=props[i][0],
                     scores=props[i][1], masks=masks[i], fallback=i in fallback) for i in range(len(images))]

    def _refine_groups(self, counts: List[int]) -> List[List[int]]:
        """Consecutive images in groups of at most ``refine_max_crops`` crops (an image is never split)."""
        groups, cur, n = [], [], 0
        for i, c in enumerate(counts):
            if cur and n + c > self.refine_max_crops:
                groups.append(cur)
                cur, n = [], 0
            cur.append(i)
            n += c
        if cur:
            groups.append(cur)
        return groups

    # ------------------------------------------------------------------------------------------------- queries
    def describe_query(self, image: np.ndarray, box) -> np.ndarray:
        """The query object's descriptor (square crop of side max(w, h) around ``box``, zero-padded)."""
        return self.describe_queries([image], [box])[0]

    def describe_queries(self, images: Sequence[np.ndarray], boxes: Sequence) -> np.ndarray:
        """Descriptors [Q, D] (numpy float32) of several query objects, encoded in batches."""
        crops = [crop_padded(im, square_crop_box(box, 0)) for im, box in zip(images, boxes)]
        return self.encoder.embed(crops).cpu().numpy().astype(np.float32)
