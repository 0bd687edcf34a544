#!/usr/bin/env python
# Copyright (c) queryvision_mm contributors. All rights reserved.
"""Compare mmcv's compiled CUDA MultiScaleDeformableAttention with its pure-PyTorch path (the one CPU runs use):
forward output and the gradients w.r.t. value, sampling locations and attention weights, at DINO's shapes
(4 levels, 8 heads, 4 points, 256 channels) and at CQ-DINO Swin-L's (5 levels). Prints and optionally writes JSON;
exit 1 when any relative error exceeds --tol, 2 when CUDA or the compiled op is missing.

    python tools/misc/check_msda_cuda.py [--tol 1e-3] [--out msda.json]
"""
import argparse
import json
import sys


def case(levels, batch=2, heads=8, points=4, channels=32, queries=300, base=24, seed=0, dtype='float64'):
    import torch
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[max(1, base >> i), max(1, (base * 3 // 2) >> i)] for i in range(levels)])
    start = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    n = int((shapes[:, 0] * shapes[:, 1]).sum())
    dt = getattr(torch, dtype)
    value = torch.rand(batch, n, heads, channels, generator=g, dtype=dt) * 0.01
    loc = torch.rand(batch, queries, heads, levels, points, 2, generator=g, dtype=dt)
    attn = torch.rand(batch, queries, heads, levels, points, generator=g, dtype=dt) + 1e-5
    attn = attn / attn.sum((-1, -2), keepdim=True)
    return value, shapes, start, loc, attn


def compare(levels, dtype='float64', im2col_step=64):
    import torch
    from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttnFunction, multi_scale_deformable_attn_pytorch
    value, shapes, start, loc, attn = case(levels, dtype=dtype)
    outs = {}
    for name in ('cuda', 'pytorch'):
        v, l, a = (t.detach().cuda().requires_grad_(True) for t in (value, loc, attn))
        s, st = shapes.cuda(), start.cuda()
        out = (MultiScaleDeformableAttnFunction.apply(v, s, st, l, a, im2col_step) if name == 'cuda' else
               multi_scale_deformable_attn_pytorch(v, s, l, a))
        grad = torch.ones_like(out) + torch.linspace(0, 1, out.numel(), device=out.device,
                                                     dtype=out.dtype).view_as(out)
        out.backward(grad)
        outs[name] = dict(out=out.detach(), value=v.grad, loc=l.grad, attn=a.grad)
    report = {}
    for k in outs['cuda']:
        x, y = outs['cuda'][k].double(), outs['pytorch'][k].double()
        report[k] = dict(max_abs=float((x - y).abs().max()), rel=float((x - y).norm() / y.norm().clamp_min(1e-30)))
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--tol', type=float, default=1e-3, help='max relative (L2) error, float32 cases')
    p.add_argument('--out', help='write the numbers as JSON')
    args = p.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print('check_msda_cuda: no CUDA device visible to torch', file=sys.stderr)
        return 2
    try:
        from mmcv.utils import ext_loader
        ext_loader.load_ext('_ext', ['ms_deform_attn_forward'])
    except (ImportError, AttributeError) as e:
        print(f'check_msda_cuda: mmcv was built without its CUDA ops ({e}); rebuild with FORCE_CUDA=1 '
              'bash tools/setup_env.sh', file=sys.stderr)
        return 2
    results, ok = {}, True
    for levels in (4, 5):
        for dtype in ('float64', 'float32'):
            r = compare(levels, dtype)
            results[f'{levels}_levels_{dtype}'] = r
            worst = max(v['rel'] for v in r.values())
            ok &= dtype == 'float64' or worst <= args.tol
            print(f'MSDA CUDA vs PyTorch, {levels} levels, {dtype}: worst relative error {worst:.2e} '
                  + ' '.join(f'{k}={v["rel"]:.1e}' for k, v in r.items()))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(device=torch.cuda.get_device_name(), tol=args.tol, ok=ok, results=results), f, indent=1)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
