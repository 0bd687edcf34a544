"""QKS vs zero-shot CLIP on the same ViT-B/16 image tower: inference images/s (ratio) and QKS training-step time.

    python tools/benchmarks/bench_qks.py [--dataset nuswide openimages] [--batch 8] [--iters 5] [--device cpu|cuda]
        [--write docs/benchmarks.md]

Both models are built from the real configs (``configs/qks/{nuswide,openimages}_vitb16.py`` and
``zeroshot_clip_nuswide.py``) with the full architecture -- open_clip ``ViT-B-16-quickgelu`` (224², 197 tokens),
the 7/8-layer Q-Former with 12/22 query tokens, 1,006 (NUS-WIDE) or 7,586 (Open Images) label embeddings -- and
random weights (speed does not depend on the values; no weights can be downloaded here). One process, the same
input batch, alternating models per round so that drift in machine load hits both; median of ``--iters`` timed rounds
after one warm-up. ``infer`` = ``model(inputs, mode='predict')`` without gradients (scores for all seen + unseen
labels); ``train`` = QKS ``loss`` + backward + AdamW step on the trainable part (Q-Former, queries, projection), the
CLIP tower frozen.
"""
import argparse
import os.path as osp
import platform
import statistics
import sys
import tempfile
import time

import torch

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
LABELS = dict(nuswide=(925, 81), openimages=(7186, 400))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--dataset', nargs='+', default=['nuswide', 'openimages'], choices=list(LABELS))
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--device', default='cpu')
    p.add_argument('--write', default=None, help='markdown file to update (section "qks_speed")')
    return p.parse_args()


def build(config, label_file, num_seen, device):
    from mmengine.config import Config
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'qks', config))
    cfg.model.backbone.update(pretrained=None, allow_random_weights=True)
    cfg.model.head.update(embed_file=label_file, num_seen=num_seen)
    return MODELS.build(cfg.model).to(device)


def timed(fn, device, iters):
    fn()
    out = []
    for _ in range(iters):
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return out


def bench(dataset, args, tmp):
    from mmpretrain.structures import DataSample

    from queryvision_mm.utils.text_embeddings import save_class_embeddings
    n_seen, n_unseen = LABELS[dataset]
    names = [f'label {i}' for i in range(n_seen + n_unseen)]
    label_file = osp.join(tmp, f'{dataset}.safetensors')
    save_class_embeddings(label_file, torch.randn(len(names), 512), names)
    torch.manual_seed(0)
    qks = build(f'{dataset}_vitb16.py', label_file, n_seen, args.device)
    zs = build('zeroshot_clip_nuswide.py', label_file, n_seen, args.device)
    zs.backbone.load_state_dict(qks.backbone.state_dict())       # literally the same tower
    x = torch.randn(args.batch, 3, 224, 224, device=args.device)
    samples = [DataSample().set_gt_label([i % n_seen, (7 * i + 3) % n_seen]) for i in range(args.batch)]
    qks.eval()
    zs.eval()
    res = {}

    def infer(model):
        with torch.no_grad():
            model(x, samples, mode='predict')

    rounds = {'qks': [], 'clip': []}
    for _ in range(args.iters):   # alternate the two models round by round
        rounds['qks'] += timed(lambda: infer(qks), args.device, 1)
        rounds['clip'] += timed(lambda: infer(zs), args.device, 1)
    for k, v in rounds.items():
        res[f'infer_{k}'] = statistics.median(v)
    qks.train()
    opt = torch.optim.AdamW([p for p in qks.parameters() if p.requires_grad], lr=1e-5, weight_decay=1e-4)

    def step():
        loss = qks(x, samples, mode='loss')['loss']
        opt.zero_grad()
        loss.backward()
        opt.step()

    res['train_qks'] = statistics.median(timed(step, args.device, args.iters))
    # updated = parameters that receive a gradient (the BERT layers' text-only FFNs exist but get none)
    res['trainable'] = sum(p.numel() for p in qks.parameters() if p.requires_grad and p.grad is not None)
    res['frozen'] = sum(p.numel() for p in qks.parameters() if not p.requires_grad)
    return res


def report(results, args):
    dev = torch.cuda.get_device_name() if args.device.startswith('cuda') else f'{platform.machine()}, ' \
        f'{torch.get_num_threads()} threads'
    lines = [f'Device `{args.device}` ({dev}), torch {torch.__version__}, batch {args.batch} of 224² images, median of '
             f'{args.iters} rounds after a warm-up, models alternated round by round in one process.', '',
             '| dataset (labels) | zero-shot CLIP img/s | QKS img/s | QKS / CLIP throughput | QKS train step (s) | '
             'QKS train img/s | updated / frozen params |', '|---|---|---|---|---|---|---|']
    for ds, r in results.items():
        n = sum(LABELS[ds])
        ips_clip, ips_qks = args.batch / r['infer_clip'], args.batch / r['infer_qks']
        lines.append(f'| {ds} ({n:,}) | {ips_clip:.1f} | {ips_qks:.1f} | **{ips_qks / ips_clip:.2f}x** | '
                     f'{r["train_qks"]:.2f} | {args.batch / r["train_qks"]:.1f} | '
                     f'{r["trainable"] / 1e6:.1f} M / {r["frozen"] / 1e6:.1f} M |')
    return '\n'.join(lines)


def main():
    args = parse_args()
    sys.path.insert(0, REPO)
    import queryvision_mm.mmpretrain_plugin  # noqa: F401  (registers the QKS models in mmpretrain's registries)
    from mmengine.registry import DefaultScope
    DefaultScope.get_instance('qv_bench_qks', scope_name='mmpretrain')
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ds in args.dataset:
            results[ds] = bench(ds, args, tmp)
            print(ds, results[ds], flush=True)
    table = report(results, args)
    print(table)
    if args.write:
        sys.path.insert(0, osp.dirname(__file__))
        from bench_semi_detr import write_section
        write_section(args.write, 'qks_speed', table)


if __name__ == '__main__':
    main()
