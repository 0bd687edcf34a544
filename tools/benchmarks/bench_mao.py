"""MaO benchmarks: stage-B refinement cost per object vs one encoder forward, and FAISS search latency at 1M.

    python tools/benchmarks/bench_mao.py [--parts refine faiss] [--objects 4] [--iters 80] [--gallery 1000000]
        [--dim 768] [--queries 200] [--device cpu|cuda] [--write docs/benchmarks.md]

``refine``: the real architectures with random weights (speed does not depend on the values) -- open_clip
``ViT-B-16`` (224², 512-d) and Hugging Face DINOv2-base (224², 768-d) -- N object crops of one gallery image;
"forward" = one encoder forward of the N crops (what a plain descriptor costs), "refine" = ``MaORefiner.refine``
(one forward keeping the last block's attention graph + 80 AdamW steps, each a second-order LeGrad map of all N
crops). Reported per object, and the ratio refine / forward. Median of 3 runs after a warm-up, same process.

``faiss``: ``--gallery`` random unit descriptors, exact inner-product top-100 per query: FAISS ``IndexFlatIP``
(faiss-cpu; GPU FAISS if present and ``--device cuda``) vs brute-force NumPy (matrix-vector product +
``argpartition`` + sort of the top 100) on the same data, one query at a time; p50 / p99 latency over ``--queries``
queries, plus batched throughput (FAISS: all queries in one call; NumPy: one matrix product per 50 queries). Both
return the same top-100 (checked).
"""
import argparse
import os.path as osp
import platform
import statistics
import sys
import time

import numpy as np
import torch

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--parts', nargs='+', default=['refine', 'faiss'], choices=['refine', 'faiss'])
    p.add_argument('--objects', type=int, default=4)
    p.add_argument('--iters', type=int, default=80)
    p.add_argument('--gallery', type=int, default=1_000_000)
    p.add_argument('--dim', type=int, default=768)
    p.add_argument('--queries', type=int, default=200)
    p.add_argument('--device', default='cpu')
    p.add_argument('--write', default=None, help='markdown file to update (sections "mao_refine", "mao_faiss")')
    return p.parse_args()


def _sync(device):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def _median_time(fn, device, runs=3):
    fn()
    out = []
    for _ in range(runs):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def bench_refine(args):
    import open_clip
    import transformers

    from queryvision_mm.models.layers.legrad import LeGradDINOv2, LeGradOpenCLIP
    from queryvision_mm.models.retrievers import MaORefiner
    torch.manual_seed(0)
    n = args.objects
    crops = torch.randn(n, 3, 224, 224, device=args.device)
    masks = torch.zeros(n, 224, 224, device=args.device)
    masks[:, 80:150, 70:160] = 1
    encoders = {}
    clip = open_clip.create_model('ViT-B-16').visual.eval().requires_grad_(False).to(args.device)
    encoders['CLIP ViT-B/16 (open_clip)'] = (lambda x: clip(x), LeGradOpenCLIP(clip))
    dino = transformers.Dinov2Model(transformers.Dinov2Config(image_size=224, attn_implementation='eager'))
    dino = dino.eval().requires_grad_(False).to(args.device)
    lg_dino = LeGradDINOv2(dino)
    encoders['DINOv2-base (transformers)'] = (lambda x: dino(pixel_values=x).pooler_output, lg_dino)
    rows = []
    for name, (fwd, explainer) in encoders.items():
        with torch.no_grad():
            t_fwd = _median_time(lambda: fwd(crops), args.device)
        refiner = MaORefiner(explainer, iters=args.iters)
        t_ref = _median_time(lambda: refiner.refine(crops, masks), args.device, runs=2)
        rows.append((name, t_fwd / n, t_ref / n, t_ref / t_fwd))
        print(name, rows[-1], flush=True)
    dev = torch.cuda.get_device_name() if args.device.startswith('cuda') else \
        f'{platform.machine()}, {torch.get_num_threads()} threads'
    lines = [f'Device `{args.device}` ({dev}), torch {torch.__version__}; {n} object crops of 224² per image, '
             f'{args.iters} iterations, LeGrad on the last block, median of 2-3 runs after a warm-up.', '',
             '| encoder | forward s / object | stage B s / object | stage B / forward |', '|---|---|---|---|']
    lines += [f'| {r[0]} | {r[1]:.3f} | {r[2]:.2f} | **{r[3]:.0f}x** |' for r in rows]
    return '\n'.join(lines)


def bench_faiss(args):
    import faiss

    from queryvision_mm.utils.descriptor_index import DescriptorIndex
    rng = np.random.default_rng(0)
    k = 100
    g = rng.standard_normal((args.gallery, args.dim), dtype=np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    index = DescriptorIndex(args.dim, use_gpu=args.device.startswith('cuda'))
    t = time.perf_counter()
    index.add(g, [''] * len(g))
    t_build = time.perf_counter() - t

    def numpy_topk(v):
        s = g @ v
        top = np.argpartition(-s, k)[:k]
        return top[np.argsort(-s[top], kind='stable')]

    lat = {'faiss': [], 'numpy': []}
    for i in range(args.queries):   # alternate the two per query
        t = time.perf_counter()
        _, fi = index.search(q[i:i + 1], k)
        lat['faiss'].append(time.perf_counter() - t)
        t = time.perf_counter()
        ni = numpy_topk(q[i])
        lat['numpy'].append(time.perf_counter() - t)
        if i < 20:
            assert set(fi[0].tolist()) == set(ni.tolist()), 'FAISS and NumPy disagree on the top 100'
    t = time.perf_counter()
    index.search(q, k)
    t_batch_faiss = time.perf_counter() - t
    t = time.perf_counter()
    for c in range(0, args.queries, 50):   # NumPy batched too: one matrix product per 50 queries
        s = g @ q[c:c + 50].T
        top = np.argpartition(-s, k, axis=0)[:k]
        np.take_along_axis(s, top, axis=0).argsort(axis=0)
    t_batch_numpy = time.perf_counter() - t
    pct = {m: (np.percentile(v, 50) * 1e3, np.percentile(v, 99) * 1e3) for m, v in lat.items()}
    print(pct, t_batch_faiss, t_batch_numpy, flush=True)
    lines = [f'{args.gallery:,} random unit descriptors of {args.dim} dims ({args.gallery * args.dim * 4 / 2**30:.1f} '
             f'GiB), exact top-{k} per query, {args.queries} queries, faiss {faiss.__version__} '
             f'({"GPU" if index.use_gpu else "CPU"}, {faiss.omp_get_max_threads()} threads), index built in '
             f'{t_build:.1f} s; same top-100 as NumPy (checked).', '',
             '| search | p50 ms / query | p99 ms / query | all queries as one batch, queries/s |', '|---|---|---|---|',
             f'| FAISS IndexFlatIP | {pct["faiss"][0]:.1f} | {pct["faiss"][1]:.1f} | '
             f'{args.queries / t_batch_faiss:.1f} |',
             f'| NumPy brute force | {pct["numpy"][0]:.1f} | {pct["numpy"][1]:.1f} | '
             f'{args.queries / t_batch_numpy:.1f} (50 queries per matrix product) |',
             '', f'Single-query latency, FAISS p50 / NumPy p50: **{pct["faiss"][0] / pct["numpy"][0]:.2f}x** (above 1 = '
             f'FAISS slower); batched throughput, FAISS / NumPy: **{t_batch_numpy / t_batch_faiss:.1f}x**.']
    return '\n'.join(lines)


def main():
    args = parse_args()
    sys.path.insert(0, REPO)
    import queryvision_mm.mmpretrain_plugin  # noqa: F401  (MaO modules in mmpretrain's registries)
    sys.path.insert(0, osp.dirname(__file__))
    from bench_semi_detr import write_section
    for part in args.parts:
        table = bench_refine(args) if part == 'refine' else bench_faiss(args)
        print(table)
        if args.write:
            write_section(args.write, f'mao_{part}', table)


if __name__ == '__main__':
    main()
