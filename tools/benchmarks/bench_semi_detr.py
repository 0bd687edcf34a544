"""Training-step time and peak memory: supervised DINO vs Semi-DETR vs Sparse Semi-DETR, same shrunk config.

    python tools/benchmarks/bench_semi_detr.py [--config configs/semi_detr/demo_shapes.py]
        [--sparse-config configs/sparse_semi_detr/demo_shapes.py] [--iters 10] [--device cpu|cuda]
        [--write docs/benchmarks.md]

All variants run from this one invocation on the same machine, each in a fresh subprocess (so the peak
resident memory of one does not hide another's); the ratios are against supervised DINO of the same run.
Variants:
  * ``dino_sup``     mmdet's own DINO + DINOHead (student architecture), 5 labeled images per step;
  * ``semi_o2m``     Semi-DETR, one-to-many stage (consistency queries, GMM mining), 1 + 4 images;
  * ``semi_o2o``     Semi-DETR, one-to-one stage, 1 + 4 images;
  * ``sparse_o2m``   Sparse Semi-DETR (Semi-DETR's demo config + QRM + RPFM), one-to-many stage;
  * ``sparse_o2o``   Sparse Semi-DETR, one-to-one stage.
Two tables: Semi-DETR vs supervised DINO, and Sparse Semi-DETR vs Semi-DETR per stage (with the student decoder's
input length: extra (consistency / refined) + denoising + matching queries, mean over the timed steps).
Inputs are fixed synthetic batches (``mmdet.testing.demo_mm_inputs``, 3 boxes per labeled image); the
teacher's classifier bias is raised so that pseudo-labels exist, as in a trained model.
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
VARIANTS = ('dino_sup', 'semi_o2m', 'semi_o2o', 'sparse_o2m', 'sparse_o2o')


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--config', default=osp.join(REPO, 'configs/semi_detr/demo_shapes.py'))
    p.add_argument('--sparse-config', default=osp.join(REPO, 'configs/sparse_semi_detr/demo_shapes.py'))
    p.add_argument('--iters', type=int, default=10)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--size', type=int, nargs=2, default=[160, 160], help='H W of every image')
    p.add_argument('--device', default='cpu')
    p.add_argument('--write', default=None, help='markdown file to update (section between markers)')
    p.add_argument('--variant', choices=VARIANTS, help=argparse.SUPPRESS)
    return p.parse_args()


def run_variant(args):
    import copy

    import numpy as np
    import torch

    import queryvision_mm  # noqa: F401
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    from mmdet.utils import register_all_modules

    register_all_modules()
    torch.manual_seed(0)
    cfg = Config.fromfile(args.sparse_config if args.variant.startswith('sparse') else args.config)
    dev = torch.device(args.device)
    shape = [3] + list(args.size)

    def batch(n, ngt):
        d = demo_mm_inputs(n, [shape] * n, num_items=[ngt] * n, num_classes=cfg.model.detector.bbox_head.num_classes)
        for s in d['data_samples']:
            s.set_metainfo(dict(homography_matrix=np.eye(3, dtype=np.float32)))
        return d

    if args.variant == 'dino_sup':
        det = copy.deepcopy(cfg.model.detector)
        det.type = 'DINO'
        for k in ('o2m_assigner', 'loss_cls_o2m', 'l1_double_count', 'nms_cfg', 'enc_class_agnostic'):
            det.bbox_head.pop(k, None)
        det.bbox_head.type = 'DINOHead'
        model = MODELS.build(det).to(dev)
        data = model.data_preprocessor(batch(5, 3), True)

        def step():
            return model.loss(data['inputs'], data['data_samples'])
    else:
        model = MODELS.build(cfg.model).to(dev)
        model.set_stage(args.variant.endswith('_o2m'))
        raw = dict(inputs={}, data_samples={})
        for key, n, ngt in (('sup', 1, 3), ('unsup_teacher', 4, 0), ('unsup_student', 4, 0)):
            d = batch(n, ngt)
            raw['inputs'][key], raw['data_samples'][key] = d['inputs'], d['data_samples']
        data = model.data_preprocessor(raw, True)

        def step():
            return model.loss(data['inputs'], copy.deepcopy(data['data_samples']))

    model.init_weights()
    if args.variant != 'dino_sup':  # a teacher that produces pseudo-labels, as a trained one does
        for b in model.teacher.bbox_head.cls_branches:
            b.bias.data.fill_(1.0)
    model.train()
    # student decoder input length of the training pass (the one with gradients): extra + DN + matching queries
    decoder_lengths = []
    student = model if args.variant == 'dino_sup' else model.student
    plain_forward_decoder = student.forward_decoder

    def counting_forward_decoder(query, *a, **kw):
        if torch.is_grad_enabled() and query.size(0) > 1:  # the unlabeled batch (4 images) in the semi variants
            decoder_lengths.append(query.size(1))
        return plain_forward_decoder(query, *a, **kw)

    student.forward_decoder = counting_forward_decoder
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    if dev.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    queries = None
    for i in range(args.warmup + args.iters):
        if dev.type == 'cuda':
            torch.cuda.synchronize()
        t = time.perf_counter()
        losses = step()
        total, _ = model.parse_losses(losses)
        opt.zero_grad()
        total.backward()
        opt.step()
        if dev.type == 'cuda':
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    out = dict(
        variant=args.variant,
        step_s_median=float(np.median(times)),
        step_s_mean=float(np.mean(times)),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        rss_growth_mb=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024,
        cuda_peak_mb=(torch.cuda.max_memory_allocated() / 2**20) if dev.type == 'cuda' else None,
        num_pseudo=float(losses.get('unsup_num_pseudo', 0)) if isinstance(losses, dict) else 0,
        num_extra_queries=float(losses.get('unsup_num_extra_queries', 0)) if isinstance(losses, dict) else 0,
        decoder_queries=float(np.mean(decoder_lengths)) if decoder_lengths else 0.0,
    )
    print('BENCH_JSON ' + json.dumps(out))


def main():
    args = parse_args()
    if args.variant:
        return run_variant(args)
    results = {}
    for v in VARIANTS:
        cmd = [sys.executable, __file__, '--variant', v, '--config', args.config, '--sparse-config',
               args.sparse_config, '--iters', str(args.iters),
               '--warmup', str(args.warmup), '--size', *map(str, args.size), '--device', args.device]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith('BENCH_JSON ')]
        if proc.returncode != 0 or not line:
            sys.exit(f'variant {v} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
        results[v] = json.loads(line[0][len('BENCH_JSON '):])
        print(results[v])
    import torch
    base = results['dino_sup']
    rows = []
    for v in VARIANTS[:3]:
        r = results[v]
        mem = r['cuda_peak_mb'] if r['cuda_peak_mb'] is not None else r['peak_rss_mb']
        bmem = base['cuda_peak_mb'] if base['cuda_peak_mb'] is not None else base['peak_rss_mb']
        rows.append(f"| {v} | {r['step_s_median']:.3f} | {r['step_s_median'] / base['step_s_median']:.2f}x | "
                    f"{mem:.0f} | {mem / bmem:.2f}x | {r['num_pseudo']:.1f} |")
    mem_kind = 'CUDA max_memory_allocated' if args.device.startswith('cuda') else 'process peak RSS'
    table = '\n'.join([
        f'Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, device `{args.device}`, '
        f'torch {torch.__version__}; config `{osp.relpath(args.config, REPO)}` (shrunk DINO-R18, 2+2 layers, '
        f'100 queries), images {args.size[0]}x{args.size[1]}, median of {args.iters} steps after {args.warmup} '
        f'warm-up, forward + backward + AdamW step. Memory: {mem_kind}.', '',
        '| variant | step time (s) | vs supervised | peak memory (MB) | vs supervised | pseudo-labels / image |',
        '|---|---|---|---|---|---|', *rows])
    print(table)
    if args.write:
        write_section(args.write, 'semi_detr_speed', table)

    def mem_of(r):
        return r['cuda_peak_mb'] if r['cuda_peak_mb'] is not None else r['peak_rss_mb']

    rows = []
    for stage in ('o2m', 'o2o'):
        semi, sparse = results[f'semi_{stage}'], results[f'sparse_{stage}']
        for name, r in ((f'semi_{stage}', semi), (f'sparse_{stage}', sparse)):
            rows.append(f"| {name} | {r['step_s_median']:.3f} | {r['step_s_median'] / semi['step_s_median']:.2f}x | "
                        f"{mem_of(r):.0f} | {mem_of(r) / mem_of(semi):.2f}x | {r['num_extra_queries']:.0f} | "
                        f"{r['decoder_queries']:.0f} | {r['num_pseudo']:.1f} |")
    whole = lambda p: sum(results[f'{p}_{s}']['step_s_median'] for s in ('o2m', 'o2o'))  # noqa: E731
    sparse_table = '\n'.join([
        f'Same machine, run and synthetic batches as the table above; Sparse config '
        f'`{osp.relpath(args.sparse_config, REPO)}` (= the Semi-DETR demo config + QRM + RPFM). Ratios against '
        f'Semi-DETR in the same stage. Whole schedule (half the iterations in each stage): '
        f'**{whole("sparse") / whole("semi"):.2f}x** Semi-DETR\'s step time (paper, Table 12: 0.89x).', '',
        '| variant | step time (s) | vs Semi-DETR | peak memory (MB) | vs Semi-DETR | extra queries | '
        'student decoder queries (extra + DN + matching) | pseudo-labels / image |',
        '|---|---|---|---|---|---|---|---|', *rows])
    print(sparse_table)
    if args.write:
        write_section(args.write, 'sparse_semi_detr_speed', sparse_table)


def write_section(path, key, body):
    begin, end = f'<!-- BEGIN {key} -->', f'<!-- END {key} -->'
    text = open(path).read() if osp.exists(path) else ''
    block = f'{begin}\n{body}\n{end}'
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + '\n\n' + block + '\n'
    with open(path, 'w') as f:
        f.write(text)


if __name__ == '__main__':
    main()
