"""MaO gallery pipeline pieces (mmpretrain ``MODELS``): OWLv2 objectness proposals, SAM box-prompted masks, crop
encoders (open_clip CLIP, Hugging Face DINOv2), and the crop geometry.

Every model is loaded from local files only (no hub downloads): OWLv2 and DINOv2 with ``from_pretrained(folder,
local_files_only=True)``, CLIP through :func:`queryvision_mm.utils.open_clip_loader.load_open_clip`, SAM through
segment-anything's own builders (``sam_model_registry[model_type](checkpoint)``, which load with torch's default safe
``weights_only`` unpickling) or, for other sizes, segment-anything's modules assembled from an ``arch`` dict and
loaded with ``weights_only=True``.
"""
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmpretrain.registry import MODELS

from ...utils.open_clip_loader import _offline, load_open_clip
from ..layers.legrad import LeGradDINOv2, LeGradOpenCLIP

OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------------- geometry
def square_crop_box(box: Sequence[float], min_size: float = 0.0) -> Tuple[int, int, int, int]:
    """Square (x0, y0, x1, y1) centred on ``box`` with side max(w, h, min_size) (MaO's object-centred crop; the
    query crop is the same with ``min_size=0``). It may extend beyond the image (that part is zero-padded)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0, float(min_size), 1.0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    sx, sy = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = int(round(side))
    return sx, sy, sx + s, sy + s


def crop_padded(array: np.ndarray, box: Sequence[int], fill=0) -> np.ndarray:
    """``array[y0:y1, x0:x1]`` with the part outside the image filled with ``fill`` (H, W[, C] arrays)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = array.shape[:2]
    out = np.full((y1 - y0, x1 - x0) + array.shape[2:], fill, dtype=array.dtype)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if ix1 > ix0 and iy1 > iy0:
        out[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = array[iy0:iy1, ix0:ix1]
    return out


def resize_batch(images: List[np.ndarray], size: int, mean, std) -> Tensor:
    """HWC uint8 RGB arrays -> normalised [N, 3, size, size] (bicubic squash, as the official extractors)."""
    out = []
    for im in images:
        t = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float() / 255.0
        out.append(F.interpolate(t, size=(size, size), mode='bicubic', align_corners=False).clamp(0, 1)[0])
    x = torch.stack(out) if out else torch.zeros(0, 3, size, size)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def resize_masks(masks: List[np.ndarray], size: int) -> Tensor:
    if not masks:
        return torch.zeros(0, size, size)
    t = torch.stack([torch.from_numpy(np.ascontiguousarray(m)).float() for m in masks])[:, None]
    return (F.interpolate(t, size=(size, size), mode='nearest')[:, 0] > 0.5).float()


def merge_lora_adapter(module: nn.Module, adapter_dir: Optional[str]) -> nn.Module:
    """Load a peft LoRA adapter (stage A, ``QVSaveLoRAAdapterHook``) into ``module`` and merge it into the weights."""
    if adapter_dir is None:
        return module
    from peft import PeftModel
    if not osp.isfile(osp.join(adapter_dir, 'adapter_config.json')):
        raise FileNotFoundError(f'LoRA adapter folder without adapter_config.json: {adapter_dir!r}')
    return PeftModel.from_pretrained(module, adapter_dir).merge_and_unload()


def _require_dir(path: str, what: str) -> None:
    if not osp.isdir(path):
        raise FileNotFoundError(f'{what}: local model folder not found: {path!r} (weights are never downloaded; '
                                'save the model with save_pretrained() elsewhere and copy the folder)')


# ----------------------------------------------------------------------------------------------------- encoders
class _CropEncoder(nn.Module):
    input_size: int = 224
    mean, std = OPENAI_MEAN, OPENAI_STD

    def preprocess(self, images: List[np.ndarray]) -> Tensor:
        return resize_batch(images, self.input_size, self.mean, self.std)

    @torch.no_grad()
    def embed(self, images: List[np.ndarray], batch_size: int = 32) -> Tensor:
        """L2-normalised descriptors [N, D] of HWC uint8 RGB arrays."""
        outs = [F.normalize(self.encode(self.preprocess(images[i:i + batch_size])).float(), dim=-1)
                for i in range(0, len(images), batch_size)]
        return torch.cat(outs) if outs else torch.zeros(0, self.dim)


@MODELS.register_module()
class QVOpenCLIPCropEncoder(_CropEncoder):
    """open_clip CLIP image tower as a crop encoder (MaO-CLIP: ViT-B/16 OpenAI weights, 512-d, 224² squash).

    Args:
        model_name: ``'local-dir:/folder'`` or an open_clip name with ``pretrained`` a local weights file.
        pretrained: local weights file (built-in names). ``allow_random_weights`` permits None (tests/demo).
        lora_adapter: optional stage-A adapter folder (merged into the weights).
    """

    def __init__(self, model_name: str = 'ViT-B-16', pretrained: Optional[str] = None, input_size: Optional[int] = None,
                 allow_random_weights: bool = False, lora_adapter: Optional[str] = None) -> None:
        super().__init__()
        if pretrained is None and not model_name.startswith('local-dir:') and not allow_random_weights:
            raise ValueError(f'QVOpenCLIPCropEncoder: {model_name} without pretrained weights would be random')
        model, _, _ = load_open_clip(model_name, pretrained=pretrained)
        self.visual = merge_lora_adapter(model.visual, lora_adapter).eval()
        native = self.visual.image_size
        self.input_size = int(input_size or (native[0] if isinstance(native, (tuple, list)) else native))
        self.dim = int(self.visual.output_dim)

    def encode(self, x: Tensor) -> Tensor:
        return self.visual(x)

    def explainer(self, layers='last', minmax_scope='per_map'):
        return LeGradOpenCLIP(self.visual, layers=layers, minmax_scope=minmax_scope)


@MODELS.register_module()
class QVDINOv2CropEncoder(_CropEncoder):
    """Hugging Face DINOv2 as a crop encoder (descriptor = ``pooler_output``, the LayerNorm-ed CLS; 224² squash).

    Args:
        model_dir: local folder written by ``Dinov2Model.save_pretrained`` (e.g. ``facebook/dinov2-base``, 768-d).
        lora_adapter: optional stage-A adapter folder (merged into the weights).
    """
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, model_dir: str, input_size: int = 224, lora_adapter: Optional[str] = None) -> None:
        super().__init__()
        from transformers import Dinov2Model
        _require_dir(model_dir, 'QVDINOv2CropEncoder')
        with _offline():
            model = Dinov2Model.from_pretrained(model_dir, local_files_only=True, attn_implementation='eager')
        self.model = merge_lora_adapter(model, lora_adapter).eval()
        self.input_size, self.dim = int(input_size), int(self.model.config.hidden_size)

    def encode(self, x: Tensor) -> Tensor:
        return self.model(pixel_values=x).pooler_output

    def explainer(self, layers='last', minmax_scope='per_map'):
        return LeGradDINOv2(self.model, layers=layers, minmax_scope=minmax_scope)


# ----------------------------------------------------------------------------------------------------- proposals
@MODELS.register_module()
class QVOWLv2Objectness(nn.Module):
    """Class-agnostic object proposals from OWLv2's objectness head (MaO: threshold 0.2, NMS IoU 0.4).

    The image is padded to a square (bottom/right) and resized by transformers' ``Owlv2ImageProcessor`` to the
    model's input size; predicted (cx, cy, w, h) in [0, 1] of the padded square are scaled by max(W, H). Boxes are
    rounded to integers before NMS (as the official script). Returns boxes [K, 4] (x0, y0, x1, y1, clipped to the
    image) and scores [K], best first, at most ``max_objects``.
    """

    def __init__(self, model_dir: str, score_thr: float = 0.2, nms_iou: float = 0.4,
                 max_objects: Optional[int] = None, min_size: float = 2.0) -> None:
        super().__init__()
        from transformers import Owlv2ForObjectDetection, Owlv2ImageProcessor
        _require_dir(model_dir, 'QVOWLv2Objectness')
        with _offline():
            self.model = Owlv2ForObjectDetection.from_pretrained(model_dir, local_files_only=True).eval()
        size = self.model.config.vision_config.image_size
        self.processor = Owlv2ImageProcessor(size={'height': size, 'width': size})
        self.score_thr, self.nms_iou, self.max_objects, self.min_size = score_thr, nms_iou, max_objects, min_size

    @torch.no_grad()
    def forward(self, image: np.ndarray) -> Tuple[Tensor, Tensor]:
        from torchvision.ops import nms
        h, w = image.shape[:2]
        pixels = self.processor(images=image, return_tensors='pt')['pixel_values']
        feature_map = self.model.image_embedder(pixel_values=pixels)[0]
        b, gh, gw, d = feature_map.shape
        feats = feature_map.reshape(b, gh * gw, d)
        scores = torch.sigmoid(self.model.objectness_predictor(feats))[0]
        boxes = self.model.box_predictor(feats, feature_map)[0] * max(h, w)
        xyxy = torch.stack([boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2,
                            boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2], dim=1)
        xyxy = xyxy.round()
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h)
        keep = (scores > self.score_thr) & ((xyxy[:, 2] - xyxy[:, 0]) >= self.min_size) & \
            ((xyxy[:, 3] - xyxy[:, 1]) >= self.min_size)
        xyxy, scores = xyxy[keep], scores[keep]
        keep = nms(xyxy, scores, self.nms_iou)     # sorted by score
        if self.max_objects is not None:
            keep = keep[:self.max_objects]
        return xyxy[keep], scores[keep]


@MODELS.register_module()
class QVSAMBoxMasks(nn.Module):
    """One SAM mask per box (``multimask_output=False``), all boxes of an image in one decoder call.

    Args:
        checkpoint: local SAM weights (``sam_vit_h_4b8939.pth`` for ``model_type='vit_h'``, MaO's choice).
        model_type: a key of ``segment_anything.sam_model_registry`` (``vit_h``, ``vit_l``, ``vit_b``); or
            ``'custom'`` with ``arch`` = dict(img_size, patch_size, embed_dim, depth, num_heads, prompt_dim,
            mlp_dim) to assemble segment-anything's modules at another size.
    """

    def __init__(self, checkpoint: str, model_type: str = 'vit_h', arch: Optional[Dict] = None) -> None:
        super().__init__()
        from segment_anything import SamPredictor, sam_model_registry
        if not osp.isfile(checkpoint):
            raise FileNotFoundError(f'QVSAMBoxMasks: SAM checkpoint not found: {checkpoint!r}')
        if model_type == 'custom':
            sam = build_sam_from_arch(**(arch or {}))
            sam.load_state_dict(torch.load(checkpoint, map_location='cpu', weights_only=True))
        elif model_type in sam_model_registry:
            sam = sam_model_registry[model_type](checkpoint=checkpoint)
        else:
            raise KeyError(f'QVSAMBoxMasks: unknown model_type {model_type!r}; one of {sorted(sam_model_registry)} '
                           "or 'custom'")
        self.sam = sam.eval()
        self.predictor = SamPredictor(self.sam)

    @torch.no_grad()
    def forward(self, image: np.ndarray, boxes: Tensor) -> Tensor:
        """image HWC uint8 RGB, boxes [K, 4] xyxy -> bool masks [K, H, W]."""
        h, w = image.shape[:2]
        if len(boxes) == 0:
            return torch.zeros(0, h, w, dtype=torch.bool)
        self.predictor.set_image(np.ascontiguousarray(image))
        tb = self.predictor.transform.apply_boxes_torch(boxes.float(), (h, w))
        masks, _, _ = self.predictor.predict_torch(None, None, boxes=tb, multimask_output=False)
        return masks[:, 0]


def build_sam_from_arch(img_size: int = 1024, patch_size: int = 16, embed_dim: int = 1280, depth: int = 32,
                        num_heads: int = 16, prompt_dim: int = 256, mlp_dim: int = 2048, decoder_depth: int = 2,
                        decoder_heads: int = 8):
    """segment-anything's Sam assembled at any size (the registry's builders fix 1024² and 256-d prompts)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
    grid = img_size // patch_size
    return Sam(
        image_encoder=ImageEncoderViT(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                      num_heads=num_heads, out_chans=prompt_dim, use_rel_pos=False),
        prompt_encoder=PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(transformer_dim=prompt_dim, iou_head_hidden_dim=prompt_dim,
                                 transformer=TwoWayTransformer(depth=decoder_depth, embedding_dim=prompt_dim,
                                                               mlp_dim=mlp_dim, num_heads=decoder_heads)))
