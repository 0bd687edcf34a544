"""MaO stage A: LoRA fine-tuning of the crop encoder with a multi-object InfoNCE loss (arXiv 2503.07038, Sec. 3.1,
"multi-object fine-tuning"; the paper's training code is not released: this follows its description and the
README's hyper-parameters).

For a batch of B training images, each with k_b object crops (OWLv2 proposals or, for training images only, their
ground-truth boxes) and one query-object crop of an instance it contains:

    v_c(b) = normalize(mean_i normalize(enc(crop_{b,i})))     v_q(b) = normalize(enc(query_b))
    L = mean_b  -log( exp(<v_c(b), v_q(b)>/tau) / sum_j exp(<v_c(b), v_q(j)>/tau) )

**Negatives across GPUs** (as CLIP training): the query descriptors v_q(j) and their instance ids of *every* rank
are gathered (:func:`gather_with_grad`; its backward sums the gradients of all ranks' losses into each rank's own
rows); each rank takes the loss of its own images against the global queries. With DDP's gradient averaging this
is exactly the gradient of the single-process loss on the concatenated global batch. A query j that is not b's own
query but shows an instance of scene b (b's query instance, or any instance annotated in the scene when the data
sample carries ``scene_instances``) is a false negative and is masked out, across the whole global batch.

**Memory** (the official batch: 32 scenes x up to 16 crops + 32 queries per GPU): every crop of the batch needs a
gradient. ``micro_batch_size`` computes the descriptors as in GradCache (Gao et al. 2021, "Scaling Deep Contrastive
Learning Batch Size under Memory Limited Setup", Sec. 3.2): a pass without gradients gives all descriptors, the
loss and its gradients w.r.t. the descriptors are computed on them, then each micro-batch is re-encoded with
gradients and its cached descriptor gradient is back-propagated (:class:`ChunkedEncode`; the random state of each
micro-batch is replayed, so LoRA dropout masks are the same in both passes). Activation memory is then one
micro-batch's, whatever the batch size; ``grad_checkpointing`` additionally recomputes each transformer block, and
the config's ``QVAmpOptimWrapper`` runs the encoder under bf16 autocast (the recomputation reuses the autocast
state of the forward). The measured numbers and the estimate for an 80 GB GPU are in the README ("MaO", stage A).

LoRA (peft, the maintained implementation) on the attention projections: ``query``/``key``/``value`` of Hugging
Face DINOv2 (as the released loader), the ``nn.MultiheadAttention`` blocks of open_clip's ViT; rank 256, alpha 32,
dropout 0.1 by default. Only the adapters train. :meth:`save_adapter` writes a peft adapter folder that the crop
encoders load with ``lora_adapter=...`` (merged into the weights for extraction and LeGrad).
"""
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from mmengine import dist
from mmengine.model import BaseModel
from torch import Tensor

from mmpretrain.registry import MODELS

DEFAULT_TARGETS = dict(QVDINOv2CropEncoder=['query', 'key', 'value'], QVOpenCLIPCropEncoder=['attn'])
# the transformer blocks of the encoders (Hugging Face DINOv2, open_clip ViT), checkpointed with grad_checkpointing
CHECKPOINT_BLOCKS = ('Dinov2Layer', 'ResidualAttentionBlock')


# ----------------------------------------------------------------------------------------------------- the loss
def multi_object_info_nce(crop_desc: Tensor, query_desc: Tensor, instances: Sequence[int], temperature: float = 0.07,
                          query_instances: Optional[Sequence[int]] = None, positives: Optional[Sequence[int]] = None,
                          scene_instances: Optional[Sequence[Sequence[int]]] = None) -> Tensor:
    """InfoNCE of image descriptors [B, D] (rows) vs query descriptors [M, D] (columns; both unit), mean over rows.

    Args:
        instances: the instance of row b's own query (length B).
        query_instances: the instance of every column (default ``instances``, M = B).
        positives: the column of row b's own query (default ``arange(B)``).
        scene_instances: per row, the instances annotated in the scene; a column showing one of them is masked too.

    A column j != positives[b] whose instance is ``instances[b]`` (or in ``scene_instances[b]``) is a false
    negative: excluded from the denominator.
    """
    b = crop_desc.shape[0]
    device = crop_desc.device
    logits = crop_desc @ query_desc.t() / temperature
    row_ins = torch.as_tensor(list(instances), device=device).view(b, 1)
    col_ins = torch.as_tensor(list(query_instances if query_instances is not None else instances), device=device)
    pos = torch.as_tensor(list(positives) if positives is not None else range(b), device=device, dtype=torch.long)
    if col_ins.numel() != logits.shape[1] or row_ins.numel() != b or pos.numel() != b:
        raise ValueError(f'multi_object_info_nce: {b} rows x {logits.shape[1]} columns but {row_ins.numel()} row '
                         f'instances, {col_ins.numel()} column instances, {pos.numel()} positives')
    same = col_ins[None, :] == row_ins
    if scene_instances is not None:
        width = max([len(s) for s in scene_instances] + [1])
        scene = torch.full((b, width), -2, dtype=torch.long, device=device)   # -2: never an instance id
        for i, s in enumerate(scene_instances):
            if len(s):
                scene[i, :len(s)] = torch.as_tensor(list(s), device=device)
        same |= (col_ins[None, :, None] == scene[:, None, :]).any(-1)
    same[torch.arange(b, device=device), pos] = False
    logits = logits.masked_fill(same, float('-inf'))
    return F.cross_entropy(logits, pos)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather of equal-shaped [n, ...] tensors; backward: the sum over ranks of the gathered gradient, own rows."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.rank, world = torch_dist.get_rank(), torch_dist.get_world_size()
        out = [torch.empty_like(x) for _ in range(world)]
        torch_dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        torch_dist.all_reduce(grad)
        n = grad.shape[0] // torch_dist.get_world_size()
        return grad[ctx.rank * n:(ctx.rank + 1) * n]


def gather_with_grad(x: Tensor) -> Tuple[Tensor, int, List[int]]:
    """Concatenate ``x`` [n_r, ...] of every rank (ranks may hold different n_r); gradients flow back to each rank's
    own rows, summed over the losses of all ranks. Returns (gathered, offset of this rank's rows, sizes)."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()) or torch_dist.get_world_size() == 1:
        return x, 0, [x.shape[0]]
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [int(s) for s in dist.all_gather(n)]
    pad = max(sizes) - x.shape[0]
    padded = F.pad(x, (0, 0) * (x.dim() - 1) + (0, pad)) if pad else x
    full = _GatherWithGrad.apply(padded)
    m = max(sizes)
    rank = torch_dist.get_rank()
    return torch.cat([full[r * m:r * m + s] for r, s in enumerate(sizes)]), sum(sizes[:rank]), sizes


def gather_ids(ids: Tensor, sizes: List[int]) -> Tensor:
    """Concatenate an integer [n_r] tensor of every rank (no gradient), ``sizes`` from :func:`gather_with_grad`."""
    if len(sizes) == 1:
        return ids
    m = max(sizes)
    padded = torch.cat([ids, ids.new_full((m - ids.numel(), ), -1)])
    full = dist.all_gather(padded)
    return torch.cat([t[:s] for t, s in zip(full, sizes)])


# ----------------------------------------------------------------------------------------------------- GradCache
def _rng_states(device: torch.device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == 'cuda' else None)


class ChunkedEncode(torch.autograd.Function):
    """``fn(x)`` computed micro-batch by micro-batch without keeping activations (GradCache, Sec. 3.2).

    Forward: ``fn`` on each micro-batch without gradients (the random state before each is saved). Backward: each
    micro-batch is re-encoded with gradients under the forward's autocast state and random state, and the cached
    output gradient is back-propagated with ``torch.autograd.grad`` into ``params``; the summed parameter gradients
    are returned, so every parameter's gradient is accumulated once per step (DDP-safe: no re-entrant
    ``backward`` on the parameters). Gradients w.r.t. ``x`` are not computed (pixels).
    """

    @staticmethod
    def forward(ctx, fn: Callable[[Tensor], Tensor], x: Tensor, chunk: int, *params: Tensor) -> Tensor:
        ctx.fn, ctx.chunk = fn, int(chunk)
        dev = x.device.type
        ctx.autocast = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        ctx.rng = []
        outs = []
        for start in range(0, x.shape[0], ctx.chunk):
            ctx.rng.append(_rng_states(x.device))
            outs.append(fn(x[start:start + ctx.chunk]).float())
        ctx.save_for_backward(x, *params)
        return torch.cat(outs)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, *params = ctx.saved_tensors
        grads: List[Optional[Tensor]] = [None] * len(params)
        dev, enabled, dtype = ctx.autocast
        cuda = [x.device] if x.device.type == 'cuda' else []
        for i, start in enumerate(range(0, x.shape[0], ctx.chunk)):
            cpu_state, cuda_state = ctx.rng[i]
            with torch.random.fork_rng(devices=cuda), torch.enable_grad(), \
                    torch.autocast(dev, dtype=dtype, enabled=enabled):
                torch.set_rng_state(cpu_state)
                if cuda_state is not None:
                    torch.cuda.set_rng_state(cuda_state, x.device)
                out = ctx.fn(x[start:start + ctx.chunk]).float()
                g = torch.autograd.grad(out, params, grad_out[start:start + ctx.chunk], allow_unused=True)
            grads = [a if b is None else (b if a is None else a + b) for a, b in zip(grads, g)]
        return (None, None, None, *grads)


# ----------------------------------------------------------------------------------------------------- the model
@MODELS.register_module()
class QVMaOContrastiveModel(BaseModel):
    """Stage-A training model (mmengine ``BaseModel``; trained with ``tools/train.py``).

    Args:
        encoder (dict): ``QVDINOv2CropEncoder`` or ``QVOpenCLIPCropEncoder``.
        lora (dict): ``peft.LoraConfig`` arguments; ``target_modules`` defaults per encoder (see module docstring).
        temperature (float): InfoNCE temperature (not given by the paper; 0.07 by default).
        grad_checkpointing (bool): recompute every encoder block's activations in the backward pass instead of
            keeping them (``torch.utils.checkpoint``; same loss and gradients).
        micro_batch_size (int, optional): GradCache micro-batch (crops and queries encoded with gradients at a
            time); None encodes the whole batch in one graph.
        gather_negatives (bool): under ``torch.distributed``, use the queries of all ranks as negatives (default).
    """

    def __init__(self, encoder: dict, lora: Optional[dict] = None, temperature: float = 0.07,
                 grad_checkpointing: bool = False, micro_batch_size: Optional[int] = None,
                 gather_negatives: bool = True, data_preprocessor: Optional[dict] = None, init_cfg=None) -> None:
        super().__init__(data_preprocessor=data_preprocessor or dict(type='mmengine.BaseDataPreprocessor'),
                         init_cfg=init_cfg)
        from peft import LoraConfig, get_peft_model
        self.encoder = MODELS.build(encoder)
        lora = dict(dict(r=256, lora_alpha=32, lora_dropout=0.1), **(lora or {}))
        lora.setdefault('target_modules', DEFAULT_TARGETS.get(type(self.encoder).__name__))
        if not lora['target_modules']:
            raise ValueError(f'QVMaOContrastiveModel: give lora.target_modules for {type(self.encoder).__name__}')
        if micro_batch_size is not None and int(micro_batch_size) < 1:
            raise ValueError(f'QVMaOContrastiveModel: micro_batch_size must be >= 1 or None, got {micro_batch_size}')
        self.lora_cfg = LoraConfig(**lora)
        attr = 'model' if hasattr(self.encoder, 'model') else 'visual'
        self._attr = attr
        setattr(self.encoder, attr, get_peft_model(getattr(self.encoder, attr), self.lora_cfg))
        self.temperature = float(temperature)
        self.micro_batch_size = None if micro_batch_size is None else int(micro_batch_size)
        self.gather_negatives = bool(gather_negatives)
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

    def _encode_unit(self, x: Tensor) -> Tensor:
        return F.normalize(self.encoder.encode(x).float(), dim=-1)

    def _descriptors(self, images: List) -> Tensor:
        """Unit descriptors [N, D] of HWC uint8 crops, with gradients for the trainable (LoRA) parameters."""
        x = self.encoder.preprocess(images).to(next(self.parameters()).device)
        params = [p for p in self.parameters() if p.requires_grad]
        if self.micro_batch_size is None or not (torch.is_grad_enabled() and params):
            return self._encode_unit(x)
        return ChunkedEncode.apply(self._encode_unit, x, self.micro_batch_size, *params)

    def forward(self, inputs, data_samples=None, mode: str = 'loss'):
        """``inputs``: dict(crops=[per image: list of HxWx3 uint8], query=[HxWx3 uint8]) as mmengine's
        ``pseudo_collate`` gives, or a list of per-image dicts (``qv_scene_collate``, the config's: scenes hold
        different numbers of crops); ``data_samples``: dict(instance=[ids]) or a list of dict(instance=id[,
        scene_instances=[ids]])."""
        if isinstance(inputs, dict):
            inputs = [dict(crops=c, query=q) for c, q in zip(inputs['crops'], inputs['query'])]
        if isinstance(data_samples, dict):
            data_samples = [dict(instance=int(i)) for i in data_samples['instance']]
        crops = [c for item in inputs for c in item['crops']]
        counts = [len(item['crops']) for item in inputs]
        if min(counts) == 0:
            raise ValueError('QVMaOContrastiveModel: a training image has no object crop')
        if mode == 'tensor':
            per_crop = self._descriptors(crops)
            return torch.stack([F.normalize(chunk.mean(0), dim=-1) for chunk in per_crop.split(counts)])
        if mode != 'loss':
            raise ValueError(f'QVMaOContrastiveModel: mode {mode!r} is not supported (loss | tensor)')
        # one encoder call (one GradCache cache) for the crops and the queries of the batch
        desc = self._descriptors(crops + [item['query'] for item in inputs])
        per_crop, query_desc = desc[:len(crops)], desc[len(crops):]
        image_desc = torch.stack([F.normalize(chunk.mean(0), dim=-1) for chunk in per_crop.split(counts)])
        instances = [int(s['instance']) for s in data_samples]
        scenes = [list(s['scene_instances']) for s in data_samples] if all(
            'scene_instances' in s for s in data_samples) else None
        return dict(loss_info_nce=self.info_nce(image_desc, query_desc, instances, scenes))

    def info_nce(self, image_desc: Tensor, query_desc: Tensor, instances: List[int],
                 scene_instances: Optional[List[List[int]]] = None) -> Tensor:
        """This rank's images against the queries of every rank (``gather_negatives``) or of this rank."""
        if not self.gather_negatives:
            return multi_object_info_nce(image_desc, query_desc, instances, self.temperature,
                                         scene_instances=scene_instances)
        all_queries, offset, sizes = gather_with_grad(query_desc)
        ins = torch.as_tensor(instances, dtype=torch.long, device=query_desc.device)
        all_ins = gather_ids(ins, sizes)
        positives = range(offset, offset + len(instances))
        return multi_object_info_nce(image_desc, all_queries, instances, self.temperature,
                                     query_instances=all_ins.tolist(), positives=positives,
                                     scene_instances=scene_instances)

    def save_adapter(self, out_dir: str) -> str:
        self.peft_module.save_pretrained(out_dir)
        return out_dir

