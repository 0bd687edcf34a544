"""MaO stage A: LoRA fine-tuning of the crop encoder with a multi-object InfoNCE loss (the paper's training code is
not released; this follows its description and the README's hyper-parameters).

For a batch of B training images, each with k_b object crops (OWLv2 proposals or, for training images only, their
ground-truth boxes) and one query-object crop of an instance it contains:

    v_c(b) = normalize(mean_i normalize(enc(crop_{b,i})))     v_q(b) = normalize(enc(query_b))
    L = mean_b  -log( exp(<v_c(b), v_q(b)>/tau) / sum_j exp(<v_c(b), v_q(j)>/tau) )

with in-batch negatives; a query j != b of the *same instance* as b is not a negative (masked out). LoRA (peft, the
maintained implementation) on the attention projections: ``query``/``key``/``value`` of Hugging Face DINOv2 (as the
released loader), the ``nn.MultiheadAttention`` blocks of open_clip's ViT; rank 256, alpha 32, dropout 0.1 by
default. Only the adapters train. :meth:`save_adapter` writes a peft adapter folder that the crop encoders load with
``lora_adapter=...`` (merged into the weights for extraction and LeGrad).
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel

from mmpretrain.registry import MODELS

DEFAULT_TARGETS = dict(QVDINOv2CropEncoder=['query', 'key', 'value'], QVOpenCLIPCropEncoder=['attn'])
# the transformer blocks of the encoders (Hugging Face DINOv2, open_clip ViT), checkpointed with grad_checkpointing
CHECKPOINT_BLOCKS = ('Dinov2Layer', 'ResidualAttentionBlock')


def multi_object_info_nce(crop_desc: torch.Tensor, query_desc: torch.Tensor, instances: Sequence[int],
                          temperature: float = 0.07) -> torch.Tensor:
    """InfoNCE of image descriptors [B, D] vs query descriptors [B, D] (both unit), same-instance negatives masked."""
    logits = crop_desc @ query_desc.t() / temperature
    ins = torch.as_tensor(list(instances), device=logits.device)
    same = (ins[:, None] == ins[None, :]) & ~torch.eye(len(ins), dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(same, float('-inf'))
    return F.cross_entropy(logits, torch.arange(len(ins), device=logits.device))


@MODELS.register_module()
class QVMaOContrastiveModel(BaseModel):
    """Stage-A training model (mmengine ``BaseModel``; trained with ``tools/train.py``).

    Args:
        encoder (dict): ``QVDINOv2CropEncoder`` or ``QVOpenCLIPCropEncoder``.
        lora (dict): ``peft.LoraConfig`` arguments; ``target_modules`` defaults per encoder (see module docstring).
        temperature (float): InfoNCE temperature (not given by the paper; 0.07 by default).
        grad_checkpointing (bool): recompute every encoder block's activations in the backward pass instead of
            keeping them (``torch.utils.checkpoint``; same loss and gradients). A step encodes every crop of every
            scene of the batch with gradients: DINOv2-base keeps ~179 MiB per 224² crop in fp32, i.e. 32 scenes x
            (k crops + 1 query) x 179 MiB per GPU (k = 16, the config's ``max_crops``: ~95 GiB); with
            checkpointing, the block inputs (~10 MiB per crop) plus one block's activations.
    """

    def __init__(self, encoder: dict, lora: Optional[dict] = None, temperature: float = 0.07,
                 grad_checkpointing: bool = False, data_preprocessor: Optional[dict] = None, init_cfg=None) -> None:
        super().__init__(data_preprocessor=data_preprocessor or dict(type='mmengine.BaseDataPreprocessor'),
                         init_cfg=init_cfg)
        from peft import LoraConfig, get_peft_model
        self.encoder = MODELS.build(encoder)
        lora = dict(dict(r=256, lora_alpha=32, lora_dropout=0.1), **(lora or {}))
        lora.setdefault('target_modules', DEFAULT_TARGETS.get(type(self.encoder).__name__))
        if not lora['target_modules']:
            raise ValueError(f'QVMaOContrastiveModel: give lora.target_modules for {type(self.encoder).__name__}')
        self.lora_cfg = LoraConfig(**lora)
        attr = 'model' if hasattr(self.encoder, 'model') else 'visual'
        self._attr = attr
        setattr(self.encoder, attr, get_peft_model(getattr(self.encoder, attr), self.lora_cfg))
        self.temperature = float(temperature)
        if grad_checkpointing:
            from ..layers.activation_checkpoint import checkpoint_module
            blocks = [m for m in self.peft_module.modules() if type(m).__name__ in CHECKPOINT_BLOCKS]
            if not blocks:
                raise ValueError(f'QVMaOContrastiveModel: grad_checkpointing found no {CHECKPOINT_BLOCKS} block in '
                                 f'{type(self.encoder).__name__}')
            for block in blocks:
                checkpoint_module(block)

    @property
    def peft_module(self):
        return getattr(self.encoder, self._attr)

    def _descriptors(self, images: List) -> torch.Tensor:
        x = self.encoder.preprocess(images).to(next(self.parameters()).device)
        return F.normalize(self.encoder.encode(x).float(), dim=-1)

    def forward(self, inputs, data_samples=None, mode: str = 'loss'):
        """``inputs``: dict(crops=[per image: list of HxWx3 uint8], query=[HxWx3 uint8]) as mmengine's
        ``pseudo_collate`` gives, or a list of per-image dicts (``qv_scene_collate``, the config's: scenes hold
        different numbers of crops); ``data_samples``: dict(instance=[ids]) or a list of dict(instance=id)."""
        if isinstance(inputs, dict):
            inputs = [dict(crops=c, query=q) for c, q in zip(inputs['crops'], inputs['query'])]
        if isinstance(data_samples, dict):
            data_samples = [dict(instance=int(i)) for i in data_samples['instance']]
        crops = [c for item in inputs for c in item['crops']]
        counts = [len(item['crops']) for item in inputs]
        if min(counts) == 0:
            raise ValueError('QVMaOContrastiveModel: a training image has no object crop')
        per_crop = self._descriptors(crops)
        image_desc = torch.stack([F.normalize(chunk.mean(0), dim=-1) for chunk in per_crop.split(counts)])
        if mode == 'tensor':
            return image_desc
        query_desc = self._descriptors([item['query'] for item in inputs])
        instances = [s['instance'] for s in data_samples]
        loss = multi_object_info_nce(image_desc, query_desc, instances, self.temperature)
        if mode == 'loss':
            return dict(loss_info_nce=loss)
        raise ValueError(f'QVMaOContrastiveModel: mode {mode!r} is not supported (loss | tensor)')

    def save_adapter(self, out_dir: str) -> str:
        self.peft_module.save_pretrained(out_dir)
        return out_dir
