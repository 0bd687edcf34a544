"""Vocabulary scaling: memory and time of CQ-DINO (category queries + top-K contrast) vs mmdet's dense DINO head.

    python tools/benchmarks/bench_cq_dino_scale.py [--classes 1203 13204 50000 200000] [--modes infer train]
        [--size 320 | --image-size 800 1333] [--encoder-layers 6] [--chunk-size 1024] [--dtype fp32|bf16|fp16]
        [--device cpu|cuda] [--mem-limit-gb 18] [--write docs/benchmarks.md]

    # honest scale (the lead's run; GPU): real encoder depth, an 800x1333 image, C up to 200,000
    python tools/benchmarks/bench_cq_dino_scale.py --device cuda --image-size 800 1333 --encoder-layers 6 \
        --classes 1203 13204 50000 200000

One detector body for both (ResNet-18, ``--encoder-layers`` encoder (default 6, the real depth) + 6 decoder layers,
900 queries, 4 levels, one ``--image-size`` H W image (``--size`` S = S x S) with 10 boxes), so that only the
classification path differs:

* ``dino``: mmdet's ``DINO`` + ``DINOHead`` with ``num_classes = C`` (7 unshared Linear(256, C) classifiers, a
  C-entry denoising label embedding, focal loss and Hungarian costs over C classes, two-stage proposals scored over
  C classes for every encoder token);
* ``cq_dino``: ``QVCQDINO`` from ``configs/cq_dino/v3det_r50.py`` with the official selector (768-d category table,
  2 cross-attention layers, 4 heads, FFN 3072), K = 100 selected categories, no relation module (the tree is linear in
  C and data-dependent), contrastive head over the K tokens; selector ``--chunk-size`` categories per chunk (0 = all at
  once, the one-pass selector) and ``--dtype`` (bf16 / fp16: the selector's own autocast; CPU: bf16 only).

Every (model, C, mode) runs in a fresh subprocess of this one invocation (so peaks do not hide each other), under
an address-space limit so that a model that does not fit reports "out of memory" instead of swapping the machine.
Memory on CPU = peak resident set growth over the process after imports (includes parameters, gradients,
activations and allocator slack); on CUDA = ``torch.cuda.max_memory_allocated``. "Bytes per category" is the slope
of peak memory between the smallest C and each larger C. ``infer`` = ``predict`` without gradients,
``train`` = ``loss`` + backward (no optimiser state).
"""
import argparse
import json
import os
import os.path as osp
import platform
import resource
import subprocess
import sys
import time

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
MODELS_ = ('cq_dino', 'dino')


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--classes', type=int, nargs='+', default=[80, 1203, 13204, 50000, 200000])
    p.add_argument('--modes', nargs='+', default=['infer', 'train'], choices=['infer', 'train'])
    p.add_argument('--size', type=int, default=320, help='square image side (ignored with --image-size)')
    p.add_argument('--image-size', type=int, nargs=2, metavar=('H', 'W'), default=None)
    p.add_argument('--encoder-layers', type=int, default=6, help='encoder depth (real models: 6)')
    p.add_argument('--chunk-size', type=int, default=1024, help='CQ-DINO selector chunk (0: all categories at once)')
    p.add_argument('--dtype', default='fp32', choices=['fp32', 'bf16', 'fp16'], help='CQ-DINO selector precision')
    p.add_argument('--num-queries', type=int, default=900)
    p.add_argument('--topk', type=int, default=100)
    p.add_argument('--device', default='cpu')
    p.add_argument('--models', nargs='+', default=list(MODELS_), choices=list(MODELS_),
                   help='both (default) for the ratios; one for a quick check')
    p.add_argument('--mem-limit-gb', type=float, default=None,
                   help='address-space limit per run (CPU; default: 80 %% of MemAvailable)')
    p.add_argument('--write', default=None, help='markdown file to update (section --section)')
    p.add_argument('--section', default='cq_dino_scale',
                   help='marker name of the section that --write replaces (<!-- BEGIN name --> ... END name)')
    p.add_argument('--child', nargs=3, metavar=('MODEL', 'C', 'MODE'), help=argparse.SUPPRESS)
    return p.parse_args()


def _rss_mb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def build(model_name, num_classes, args):
    from mmengine.config import Config
    from mmdet.registry import MODELS

    if model_name == 'dino':
        import tempfile
        with tempfile.NamedTemporaryFile('w', suffix='.py', delete=False) as f:  # mmdet:: works in _base_ only
            f.write("_base_ = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'\n")
        m = Config.fromfile(f.name).model
        os.remove(f.name)
        m.bbox_head.num_classes = num_classes
    else:
        m = Config.fromfile(osp.join(REPO, 'configs/cq_dino/v3det_r50.py')).model
        k = min(args.topk, num_classes)
        m.language_model.update(num_classes=num_classes, img_in_channels=512, topk=k, relation=None,
                                embed_file=None)
        m.hierarchy = None
        m.bbox_head.contrastive_cfg.max_text_len = k
        m.language_model.update(chunk_size=args.chunk_size or None,
                                autocast_dtype=dict(fp32=None, bf16='bfloat16', fp16='float16')[args.dtype])
        m.encoder.num_cp = min(m.encoder.get('num_cp', 0), args.encoder_layers)
    m.num_queries = args.num_queries
    m.backbone.update(depth=18, init_cfg=None)
    m.neck.in_channels = [128, 256, 512]
    m.encoder.num_layers = args.encoder_layers
    m.decoder.num_layers = 6
    m.test_cfg = dict(max_per_img=300)
    model = MODELS.build(m)
    model.init_weights()
    return model


def run_child(args):
    import numpy as np
    import torch

    import queryvision_mm  # noqa: F401
    from mmdet.testing import demo_mm_inputs
    from mmdet.utils import register_all_modules

    register_all_modules()
    torch.manual_seed(0)
    model_name, num_classes, mode = args.child[0], int(args.child[1]), args.child[2]
    dev = torch.device(args.device)
    rss0 = _rss_mb()
    out = dict(model=model_name, classes=num_classes, mode=mode)
    try:
        model = build(model_name, num_classes, args).to(dev)
        out['params'] = sum(p.numel() for p in model.parameters())
        data = demo_mm_inputs(1, [[3, *_hw(args)]], num_items=[10], num_classes=num_classes)
        data = model.data_preprocessor(data, mode == 'train')
        if dev.type == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base_cuda = torch.cuda.memory_allocated()

        def step():
            if mode == 'train':
                model.train()
                losses = model.loss(data['inputs'], data['data_samples'])
                total, _ = model.parse_losses(losses)
                total.backward()
                for p in model.parameters():
                    p.grad = None
            else:
                model.eval()
                with torch.no_grad():
                    model.predict(data['inputs'], data['data_samples'])

        reps = 2 if num_classes <= 20000 else 1
        times = []
        for i in range(reps + (1 if num_classes <= 20000 else 0)):  # warm-up only where it is cheap
            if dev.type == 'cuda':
                torch.cuda.synchronize()
            t = time.perf_counter()
            step()
            if dev.type == 'cuda':
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        times = times[-reps:]
        out.update(status='ok', step_s=float(np.median(times)),
                   peak_mb=(torch.cuda.max_memory_allocated() - base_cuda) / 2**20 if dev.type == 'cuda' else
                   resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0)
    except (MemoryError, RuntimeError) as e:
        if 'memory' not in str(e).lower() and not isinstance(e, MemoryError):
            raise
        out.update(status='oom', error=str(e).splitlines()[0][:160])
    print('BENCH_JSON ' + json.dumps(out), flush=True)


def _hw(args):
    return tuple(args.image_size) if args.image_size else (args.size, args.size)


def _child_args(args):
    return (['--size', str(args.size), '--num-queries', str(args.num_queries), '--topk', str(args.topk), '--device',
             args.device, '--encoder-layers', str(args.encoder_layers), '--chunk-size', str(args.chunk_size),
             '--dtype', args.dtype] + (['--image-size', *map(str, args.image_size)] if args.image_size else []))


def _limit(args):
    if args.device != 'cpu':
        return None
    if args.mem_limit_gb:
        return int(args.mem_limit_gb * 2**30)
    with open('/proc/meminfo') as f:
        avail = next(int(line.split()[1]) for line in f if line.startswith('MemAvailable')) * 1024
    return int(0.8 * avail)


def main():
    args = parse_args()
    if args.child:
        return run_child(args)
    limit = _limit(args)

    def set_limit():
        if limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    results = {}
    for mode in args.modes:
        for c in args.classes:
            for name in args.models:
                cmd = [sys.executable, __file__, '--child', name, str(c), mode] + _child_args(args)
                t = time.time()
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, preexec_fn=set_limit)
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith('BENCH_JSON ')]
                if line:
                    r = json.loads(line[-1][len('BENCH_JSON '):])
                elif proc.returncode < 0 or 'memory' in proc.stderr.lower():
                    r = dict(model=name, classes=c, mode=mode, status='oom',
                             error=(proc.stderr.strip().splitlines() or [f'killed by signal {-proc.returncode}'])[-1])
                else:
                    sys.exit(f'{name} C={c} {mode} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}')
                results[(name, c, mode)] = r
                print(f'[{time.time() - t:5.0f} s] {r}', flush=True)
    table = report(results, args, limit)
    print(table)
    if args.write:
        sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
        from bench_semi_detr import write_section
        write_section(args.write, args.section, table)


def _ratio(a, b, key):
    return f'{a[key] / b[key]:.2f}x' if a.get(key) and b.get(key) else '-'


def report(results, args, limit):
    import torch
    cs = sorted(args.classes)
    c0 = min([c for c in cs if c >= args.topk] or cs)  # slopes from here: below K, CQ-DINO's K (= C) differs

    def cell(r, key, fmt):
        return fmt.format(r[key]) if r.get(key) is not None else 'out of memory'

    def per_cat(name, c, mode):
        a, b = results.get((name, c0, mode)), results.get((name, c, mode))
        if not a or not b or a.get('status') != 'ok' or b.get('status') != 'ok' or c <= c0:
            return None
        return (b['peak_mb'] - a['peak_mb']) * 2**20 / (c - c0)

    mem_kind = 'CUDA max_memory_allocated growth' if args.device != 'cpu' else 'peak RSS growth over the imports'
    lines = [
        f'Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, device `{args.device}`, '
        f'torch {torch.__version__}. One body (ResNet-18, {args.encoder_layers} encoder + 6 decoder layers, '
        f'{args.num_queries} queries), one {_hw(args)[0]}x{_hw(args)[1]} image with 10 boxes; CQ-DINO with the '
        f'official selector (768-d, 2 layers, FFN 3072), K = {args.topk} (K = C below that), no relation module, '
        f'selector chunk {args.chunk_size or "none (one pass)"}, selector precision {args.dtype}. '
        f'Memory: {mem_kind}'
        + (f', address space limited to {limit / 2**30:.1f} GiB per run' if limit else '') +
        '. Bytes per category = slope of the peak between '
        f'C = {c0} and C. Median of 2 runs after a warm-up up to 20k classes, one run above.', '']
    for mode in args.modes:
        lines += [f'**{mode}** ({"predict, no gradients" if mode == "infer" else "loss + backward"})', '',
                  '| C | CQ-DINO params | DINO params | CQ-DINO peak (MB) | DINO peak (MB) | CQ-DINO B/category | '
                  'DINO B/category | CQ-DINO step (s) | DINO step (s) | CQ / DINO bytes per category | '
                  'CQ / DINO step |',
                  '|---|---|---|---|---|---|---|---|---|---|---|']
        for c in cs:
            cq, dn = results.get(('cq_dino', c, mode), {}), results.get(('dino', c, mode), {})
            pq, pd = per_cat('cq_dino', c, mode), per_cat('dino', c, mode)
            lines.append(
                f"| {c:,} | {cell(cq, 'params', '{:,}')} | {cell(dn, 'params', '{:,}')} | "
                f"{cell(cq, 'peak_mb', '{:.0f}')} | {cell(dn, 'peak_mb', '{:.0f}')} | "
                f"{'-' if pq is None else f'{pq / 1024:.1f} K'} | {'-' if pd is None else f'{pd / 1024:.1f} K'} | "
                f"{cell(cq, 'step_s', '{:.2f}')} | {cell(dn, 'step_s', '{:.2f}')} | "
                f"{'-' if not (pq and pd) else f'{pq / pd:.2f}x'} | {_ratio(cq, dn, 'step_s')} |")
        if 13204 in cs:
            pq, pd = per_cat('cq_dino', 13204, mode), per_cat('dino', 13204, mode)
            cq, dn = results.get(('cq_dino', 13204, mode), {}), results.get(('dino', 13204, mode), {})
            if pq and pd and cq['status'] == dn['status'] == 'ok':
                lines += ['', f'At C = 13,204 ({mode}): CQ-DINO / DINO bytes per category **{pq / pd:.2f}x**, '
                          f"peak memory {cq['peak_mb'] / dn['peak_mb']:.2f}x, step time "
                          f"{cq['step_s'] / dn['step_s']:.2f}x."]
        lines.append('')
    cmax = max([c for c in cs if all(results.get((n, c, args.modes[0]), {}).get('params') for n in args.models)]
               or [c0])
    if cmax > c0:
        lines.append('Parameters per category (slope): ' + ', '.join(
            f"{n} {(results[(n, cmax, args.modes[0])]['params'] - results[(n, c0, args.modes[0])]['params']) / (cmax - c0):.0f}"
            for n in args.models) + '.')
    return '\n'.join(lines).rstrip()


if __name__ == '__main__':
    main()
