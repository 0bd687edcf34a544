"""MaO stage A memory: activations kept for the backward pass per DINOv2-B crop, measured, and the GPU estimate for
the official batch (32 scenes x up to 16 crops + 32 queries per GPU).

    python tools/benchmarks/bench_mao_stage_a_memory.py [--crops 2] [--rss-crops 8]

The real DINOv2-base architecture (Hugging Face ``Dinov2Model``: 12 blocks, 768-d, patch 14, eager attention) at
random weights with the stage-A LoRA (r 256 on query/key/value, dropout 0.1), 224² crops, on CPU:

* ``saved``: bytes of the distinct tensors that autograd keeps for the backward pass of one encoder forward
  (``torch.autograd.graph.saved_tensors_hooks``; parameters excluded), per crop, for fp32 / bf16 autocast, with and
  without block checkpointing. Device-independent except for the autocast op lists (CPU's are used here).
* ``rss``: peak resident memory increase (Linux VmHWM, reset before the step) of one training step (loss + backward)
  on ``--rss-crops`` crops in a fresh process, plain (one graph) vs GradCache micro-batches of 1, fp32.

The estimate for the official batch is printed with its arithmetic.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import tempfile

import numpy as np
import torch

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
sys.path.insert(0, REPO)
MIB = 2 ** 20


def make_dinov2_base(folder: str) -> str:
    import transformers
    if not osp.isfile(osp.join(folder, 'config.json')):
        cfg = transformers.Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                        intermediate_size=3072, patch_size=14, image_size=518)
        torch.manual_seed(0)
        transformers.Dinov2Model(cfg).save_pretrained(folder)
    return folder


def build(folder: str, ckpt: bool, micro: int = None):
    import queryvision_mm.mmpretrain_plugin  # noqa: F401  (MaO modules in mmpretrain's registries)
    from mmpretrain.registry import MODELS
    model = MODELS.build(dict(type='QVMaOContrastiveModel',
                              encoder=dict(type='QVDINOv2CropEncoder', model_dir=folder, input_size=224),
                              lora=dict(r=256, lora_alpha=32, lora_dropout=0.1), grad_checkpointing=ckpt,
                              micro_batch_size=micro))
    return model.train()


def crops(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for _ in range(n)]


def saved_bytes(model, n: int, bf16: bool) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    x = model.encoder.preprocess(crops(n))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
        out = model._encode_unit(x)
    del out
    return sum(seen.values())


def rss_step(folder: str, n: int, micro):
    """Child process: peak RSS increase of one loss + backward over n crops (n/2 scenes of 1 crop + n/2 queries)."""
    torch.set_num_threads(1)
    model = build(folder, ckpt=False, micro=micro)
    with torch.no_grad():
        model._encode_unit(model.encoder.preprocess(crops(1)))   # warm-up: allocator, kernels
    half = n // 2
    ims = crops(n, 1)
    inputs = [dict(crops=[ims[i]], query=ims[half + i]) for i in range(half)]
    base = reset_peak_rss()
    loss = model(inputs, [dict(instance=i) for i in range(half)])['loss_info_nce']
    loss.backward()
    print(json.dumps(dict(n=n, micro=micro, peak_increase_mib=(peak_rss() - base) / MIB)))


def _status_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'/proc/self/status has no {field}')


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM; Linux >= 4.0) and return the current RSS in bytes."""
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    return _status_kib('VmRSS') * 1024


def peak_rss() -> int:
    return _status_kib('VmHWM') * 1024


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--crops', type=int, default=2)
    p.add_argument('--rss-crops', type=int, default=8)
    p.add_argument('--folder', default=osp.join(tempfile.gettempdir(), 'qv_dinov2_base_random'))
    p.add_argument('--rss-child', nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    folder = make_dinov2_base(args.folder)
    if args.rss_child:
        n, micro = int(args.rss_child[0]), (None if args.rss_child[1] == 'none' else int(args.rss_child[1]))
        return rss_step(folder, n, micro)
    torch.set_num_threads(max(1, os.cpu_count() // 2))
    per_crop, fixed = {}, {}
    n = args.crops
    for ckpt in (False, True):
        model = build(folder, ckpt)
        for bf16 in (False, True):
            s1, s2 = saved_bytes(model, n, bf16), saved_bytes(model, 2 * n, bf16)
            # marginal cost per crop, and the batch-independent part (bf16 copies of the weights under autocast)
            per_crop[(ckpt, bf16)] = (s2 - s1) / n
            fixed[(ckpt, bf16)] = s1 - n * per_crop[(ckpt, bf16)]
            print(f'saved for backward: checkpointing={ckpt!s:5} bf16={bf16!s:5} '
                  f'{per_crop[(ckpt, bf16)] / MIB:8.1f} MiB per 224² crop + {fixed[(ckpt, bf16)] / MIB:6.1f} MiB '
                  'per forward', flush=True)
    rss = {}
    for micro in ('none', '1'):
        out = subprocess.run([sys.executable, __file__, '--folder', folder, '--rss-child', str(args.rss_crops),
                              micro], capture_output=True, text=True, check=True)
        rss[micro] = json.loads(out.stdout.strip().splitlines()[-1])['peak_increase_mib']
        print(f'peak RSS increase of one step on {args.rss_crops} crops, micro_batch_size={micro}: '
              f'{rss[micro]:.0f} MiB', flush=True)
    # the estimate for the official per-GPU batch
    n = 32 * 16 + 32
    mb = 64
    full_fp32 = per_crop[(False, False)]
    ck_bf16 = per_crop[(True, True)]
    block_bf16 = per_crop[(False, True)] / 12     # one block's activations (recomputed in the backward pass)
    model = build(folder, True)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad) * 4
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad) * 4 * 4   # weights, grads, Adam m and v
    pixels = n * 3 * 224 * 224 * 4
    weights_bf16 = fixed[(False, True)]     # autocast's bf16 weight copies, kept during one micro-batch
    est = mb * ck_bf16 + mb * block_bf16 + weights_bf16 + pixels + frozen + lora
    print(f'\nofficial batch per GPU: N = 32 scenes x 16 crops + 32 queries = {n} DINOv2-B passes')
    print(f'  fp32, one graph, no checkpointing: {n} x {full_fp32 / MIB:.1f} MiB = {n * full_fp32 / 2**30:.1f} GiB '
          'of saved activations alone')
    print(f'  shipped config (bf16, checkpointing, GradCache micro-batch {mb}): {mb} x {ck_bf16 / MIB:.1f} MiB '
          f'(block inputs) + {mb} x {block_bf16 / MIB:.1f} MiB (one block recomputed) + {weights_bf16 / 2**30:.2f} GiB '
          f'(bf16 weight copies) + {pixels / 2**30:.2f} GiB '
          f'(pixels of all {n} crops) + {frozen / 2**30:.2f} GiB (frozen fp32 weights) + {lora / 2**30:.2f} GiB '
          f'(LoRA weights, grads, AdamW states) = {est / 2**30:.1f} GiB (+ CUDA context / allocator slack)')


if __name__ == '__main__':
    main()
