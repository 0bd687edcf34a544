"""Learning benchmark: supervised-only vs Semi-DETR vs Sparse Semi-DETR on the embedded demo data.

    python tools/benchmarks/bench_sparse_learning.py [--iters 500] [--labeled 20 --unlabeled 180]
        [--variants supervised semi_detr sparse_semi_detr] [--burn-in 250 --work-root DIR] [--write docs/benchmarks.md]
        [--o2m-norm box|group] [--qrm-select teacher_score|similarity] [--o2o-filter nms+filter|nms_free]
        [--refined-into student|both]   (Sparse Semi-DETR variants, issue 13; the duplicate rate is in the table)
        [--seeds 0 1 2]   (several seeds: one data set and one training seed each, runs under WORK_ROOT/s{seed}/,
                           the table gives mean ± std over seeds and the per-seed rows)

Same data (10 % labeled by default: 20 labeled / 180 unlabeled synthetic images, 40 val), same seed, same
iteration budget, same model (configs/*/demo_shapes.py: DINO with an ImageNet-pretrained EfficientNet-Lite0,
2+2 layers, 100 queries), one-to-one from half the budget. Variants:
  * ``supervised``        Semi-DETR's config with ``unsup_weight=0``: identical model, data stream (1 labeled +
                          4 unlabeled per batch), optimiser, EMA and switch, but nothing learned from the
                          unlabeled images;
  * ``semi_detr``         configs/semi_detr/demo_shapes.py;
  * ``sparse_semi_detr``  configs/sparse_semi_detr/demo_shapes.py (Semi-DETR's demo + QRM + RPFM).
Each run is ``tools/train.py`` in a subprocess; the final validation (teacher and student) is read back from its
``scalars.json``. Honest numbers: short from-scratch CPU runs on synthetic data are noisy (see docs).
"""
import argparse
import json
import os
import os.path as osp
import platform
import subprocess
import sys
import time

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
sys.path.insert(0, osp.join(REPO, 'tools', 'benchmarks'))
from bench_semi_detr import write_section  # noqa: E402

CONFIGS = dict(
    supervised='configs/semi_detr/demo_shapes.py',
    semi_detr='configs/semi_detr/demo_shapes.py',
    sparse_semi_detr='configs/sparse_semi_detr/demo_shapes.py')
KEYS = ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_s', 'coco/bbox_mAP_m', 'coco/bbox_mAP_l', 'dup/rate',
        'dup/preds_per_img')


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--iters', type=int, default=500)
    p.add_argument('--labeled', type=int, default=20)
    p.add_argument('--unlabeled', type=int, default=180)
    p.add_argument('--val', type=int, default=40)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--seeds', type=int, nargs='+', default=None,
                   help='several seeds (data set + training seed each); overrides --seed')
    p.add_argument('--data-root', default=osp.join(REPO, 'data', 'demo_shapes_10pct'))
    p.add_argument('--work-root', default=osp.join(REPO, 'work_dirs', 'bench_sparse_learning'))
    p.add_argument('--variants', nargs='+', default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument('--burn-in', type=int, default=0,
                   help='N > 0: supervised warm start. All variants share the supervised run\'s first N iterations '
                        '(Semi-DETR and Sparse load its iteration-N checkpoint and train the remaining iterations); '
                        'the switch to one-to-one is at 3/4 of the budget for all three')
    p.add_argument('--pseudo-thr', type=float, default=None,
                   help='override semi_train_cfg.cls_pseudo_thr (0.4 in the paper) for Semi-DETR and Sparse')
    # Sparse Semi-DETR variants (issue 13); None = the config's default
    p.add_argument('--o2m-norm', choices=['box', 'group'], default=None,
                   help='Sparse: rpfm_cfg.t_hat_norm (default box: targets normalised over all of a box\'s positives)')
    p.add_argument('--qrm-select', choices=['teacher_score', 'similarity'], default=None,
                   help='Sparse: qrm_cfg.select_by, the ranking of the kept refined queries (default teacher_score)')
    p.add_argument('--o2o-filter', choices=['nms+filter', 'nms_free'], default=None,
                   help='Sparse one-to-one pseudo-labels: nms+filter (default: Semi-DETR NMS(0.6), then the '
                        'cross-class duplicate filter) or nms_free (the pre-issue-13 default: same-class filter only)')
    p.add_argument('--refined-into', choices=['student', 'both'], default=None,
                   help='Sparse: qrm_cfg.refined_into (default student, Table 5b)')
    p.add_argument('--reuse', action='store_true',
                   help='reuse a variant\'s finished run (bench_result.json with the same iterations, seed and data)')
    p.add_argument('--write', default=None, help='markdown file to update (section between markers)')
    return p.parse_args()


def make_config(variant, args, seed, work_root, data_root):
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(REPO, CONFIGS[variant]))
    root = data_root.rstrip('/') + '/'
    for ds in cfg.train_dataloader.dataset.datasets:
        ds.data_root = root
    cfg.val_dataloader.dataset.data_root = root
    cfg.test_dataloader = cfg.val_dataloader
    for metric in cfg.val_evaluator:
        if metric['type'] == 'CocoMetric':
            metric.ann_file = root + 'annotations/instances_val.json'
    cfg.test_evaluator = cfg.val_evaluator
    iters, switch, ckpt_interval = args.iters, args.iters // 2, args.iters
    if args.burn_in:
        switch = args.iters * 3 // 4
        if variant == 'supervised':
            ckpt_interval = args.burn_in
        else:  # continue from the supervised run's iteration burn_in (a new run: EMA ramp and iteration count restart)
            iters, switch = args.iters - args.burn_in, switch - args.burn_in
            cfg.load_from = osp.join(work_root, 'supervised', f'iter_{args.burn_in}.pth')
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=iters)]
    for hook in cfg.custom_hooks:
        if hook['type'] == 'QVStageSwitchHook':
            hook['switch_iter'] = switch
    cfg.default_hooks.checkpoint.interval = ckpt_interval
    cfg.default_hooks.checkpoint.max_keep_ckpts = 2
    cfg.randomness = dict(seed=seed)
    if variant == 'supervised':
        cfg.model.semi_train_cfg.unsup_weight = 0.0
    elif args.pseudo_thr is not None:
        cfg.model.semi_train_cfg.cls_pseudo_thr = args.pseudo_thr
    if variant == 'sparse_semi_detr':
        for key, value in sparse_overrides(args).items():
            section, flag = key.split('.')
            cfg.model[section][flag] = value
    work = osp.join(work_root, variant)
    os.makedirs(work, exist_ok=True)
    path = osp.join(work, 'config.py')
    cfg.dump(path)
    return path, work, cfg


def backbone_text(cfg):
    bb = cfg.model.detector.backbone
    init = (bb.get('init_cfg') or {}).get('checkpoint')
    arch = f" {bb['arch']}" if bb.get('arch') else ''
    return f"{bb['type']}{arch} ({'init ' + init if init else 'random init'})"


def fmt(key, v):
    if v != v or v < 0:
        return 'n/a'
    return f'{100 * v:.1f}' if key.startswith('coco') else (f'{v:.2f}' if key.endswith('per_img') else f'{v:.3f}')


def mean_std(key, vals):
    import statistics
    vals = [v for v in vals if v == v and v >= 0]
    if not vals:
        return 'n/a'
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f'{fmt(key, statistics.mean(vals))} ± {fmt(key, sd)}'


def sparse_overrides(args):
    """``{'rpfm_cfg.flag' | 'qrm_cfg.flag': value}`` chosen on the command line for the Sparse variant."""
    out = {}
    if args.o2m_norm is not None:
        out['rpfm_cfg.t_hat_norm'] = args.o2m_norm
    if args.qrm_select is not None:
        out['qrm_cfg.select_by'] = args.qrm_select
    if args.o2o_filter is not None:
        nms_free = args.o2o_filter == 'nms_free'
        out.update({'rpfm_cfg.o2o_pseudo_nms': not nms_free, 'rpfm_cfg.dup_class_agnostic': not nms_free})
    if args.refined_into is not None:
        out['qrm_cfg.refined_into'] = args.refined_into
    return out


def final_metrics(work):
    found = None
    for root, _, files in os.walk(work):
        if 'scalars.json' in files:
            for line in open(osp.join(root, 'scalars.json')):
                rec = json.loads(line)
                if 'student/coco/bbox_mAP' in rec:
                    found = rec
    if found is None:
        raise RuntimeError(f'no validation result in {work}')
    return found


def main():
    args = parse_args()
    sys.path.insert(0, REPO)
    from queryvision_mm.testing.demo_data import generate_demo_shapes
    seeds = args.seeds or [args.seed]
    results = {}  # (seed, variant) -> result
    for seed in seeds:
        work_root = args.work_root if len(seeds) == 1 else osp.join(args.work_root, f's{seed}')
        data_root = args.data_root if len(seeds) == 1 else f"{args.data_root.rstrip('/')}_seed{seed}"
        generate_demo_shapes(data_root, num_labeled=args.labeled, num_unlabeled=args.unlabeled, num_val=args.val,
                             seed=seed)
        key = dict(iters=args.iters, seed=seed, labeled=args.labeled, unlabeled=args.unlabeled, val=args.val)
        if args.burn_in:
            key['burn_in'] = args.burn_in
            assert args.variants[0] == 'supervised', '--burn-in needs the supervised variant first'
        for variant in args.variants:
            cfg_path, work, cfg = make_config(variant, args, seed, work_root, data_root)
            done = osp.join(work, 'bench_result.json')
            if args.pseudo_thr is not None and variant != 'supervised':
                key = dict(key, pseudo_thr=args.pseudo_thr)
            vkey = dict(key, sparse=sparse_overrides(args)) if (
                variant == 'sparse_semi_detr' and sparse_overrides(args)) else key
            if args.reuse and osp.exists(done):
                saved = json.load(open(done))
                if saved.get('key') == vkey:
                    results[seed, variant] = saved
                    print(seed, variant, 'reused', flush=True)
                    continue
            t0 = time.time()
            proc = subprocess.run([sys.executable, osp.join(REPO, 'tools/train.py'), cfg_path, '--work-dir', work],
                                  cwd=REPO, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f'{variant} (seed {seed}) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
            results[seed, variant] = dict(key=vkey, metrics=final_metrics(work), minutes=(time.time() - t0) / 60)
            with open(done, 'w') as f:
                json.dump(results[seed, variant], f)
            print(seed, variant, json.dumps(results[seed, variant]), flush=True)
    rows = []
    for (seed, variant), r in results.items():
        m = r['metrics']
        for who in ('student', 'teacher'):
            cells = ' | '.join(fmt(k, m.get(f'{who}/{k}', float('nan'))) for k in KEYS)
            rows.append(f'| {variant} | {seed} | {who} | {cells} |')
    agg = []
    if len(seeds) > 1:
        for variant in args.variants:
            for who in ('student', 'teacher'):
                cells = ' | '.join(mean_std(k, [results[sd, variant]['metrics'].get(f'{who}/{k}', -1) for sd in seeds])
                                   for k in KEYS)
                agg.append(f'| {variant} | {who} | {cells} |')
    import torch
    pct = 100 * args.labeled / (args.labeled + args.unlabeled)
    body = '\n'.join([
        f'Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU, torch '
        f'{torch.__version__}. Demo shapes data, {args.labeled} labeled ({pct:.0f} %) + {args.unlabeled} '
        f'unlabeled training images, {args.val} val images; '
        f'{args.iters} iterations (one-to-one from {args.iters * 3 // 4 if args.burn_in else args.iters // 2}), '
        + (f'the first {args.burn_in} supervised and shared by all variants (Semi-DETR and Sparse start from the '
           f'supervised run\'s iteration-{args.burn_in} checkpoint), ' if args.burn_in else 'no warm start, ')
        + (f'pseudo-label threshold {args.pseudo_thr} instead of 0.4 for Semi-DETR and Sparse, ' if args.pseudo_thr
           is not None else '')
        + (f'Sparse flags {sparse_overrides(args)}, ' if sparse_overrides(args) else '')
        + f'seed{"s" if len(seeds) > 1 else ""} {", ".join(map(str, seeds))} (each seed its own data set and '
        f'training seed), same model for all (DINO with {backbone_text(cfg)}, 2+2 layers, 100 queries). '
        '`supervised` = Semi-DETR with unsup weight 0 (same '
        'data stream). AP in % (n/a: the val set has no object of that size), duplicate rate = fraction of '
        'predictions >= 0.3 overlapping a higher-scored same-class one with IoU > 0.7.', '',
        *([f'Mean ± std over {len(seeds)} seeds:', '',
           '| variant | evaluated | AP | AP50 | AP_s | AP_m | AP_l | dup rate | predictions >= 0.3 / image |',
           '|---|---|---|---|---|---|---|---|---|', *agg, '', 'Per seed:', ''] if agg else []),
        '| variant | seed | evaluated | AP | AP50 | AP_s | AP_m | AP_l | dup rate | predictions >= 0.3 / image |',
        '|---|---|---|---|---|---|---|---|---|---|', *rows])
    print(body)
    if args.write:
        section = 'sparse_learning' + ('_burnin' if args.burn_in else '') + (
            f'_thr{args.pseudo_thr:g}'.replace('.', '') if args.pseudo_thr is not None else '')
        write_section(args.write, section, body)


if __name__ == '__main__':
    main()
