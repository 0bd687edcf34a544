"""CQ-DINO's two-step selector (``shortlist=S``, inference only, not in the paper) measured against the exact selector
(issue 17 item 4).

    python tools/analysis_tools/selector_shortlist_recall.py [CONFIG] [--checkpoint CKPT] [--split val|test]
        [--shortlists 6 8 10 12 14] [--num-images 0] [--scale] [--scale-classes 13204] [--scale-topk 100]
        [--scale-shortlists 200 500 1000 2000] [--scale-images 12] [--threads 2] [--write docs/benchmarks.md]

``QVCategoryQuerySelector(shortlist=S)`` runs its first cross-attention layer on all C categories, ranks them with
the shared scorer and runs the remaining layers on the S best only. For each image of the config's ``--split``
dataset (test pipeline) the backbone's C5 is computed once, then the selector's ``forward_select`` runs exactly
(``shortlist=None``) and with every S; reported per S:

* overlap: the fraction of the exact top-K categories that the shortlist's top-K also holds, averaged over images
  (1.0 = the same selection; ``S = C`` must give 1.0);
* GT recall@K: the fraction of an image's distinct ground-truth categories among the selected K, averaged over the
  images with ground truth (the ``selector/recall@K`` of ``QVCategoryRecallMetric``), for the exact selector and for
  the shortlist;
* selector time per image (B = 1, median over the images, after one warm-up forward that fills the category cache;
  the backbone is not included).

Defaults: ``configs/cq_dino/demo_v3det.py`` and the checkpoint named in ``work_dirs/cq_dino_demo_v3det/last_checkpoint``
(what ``bash tools/run_demo.sh configs/cq_dino/demo_v3det.py`` writes), or ``--checkpoint``. There K = 6 of C = 14.

``--scale`` adds a run at V3Det scale that no trained model is available for here: a **randomly initialised**
selector (seed 0) with the official V3Det widths (C = 13,204, K = 100, 768-d, kv 512, 2 layers, 4 heads, FFN 3072,
no relation module) over the C5 maps (EfficientNet-Lite0, 320 channels) of the same images, for S in
``--scale-shortlists``. Its overlap says how much of the exact top-100 a shortlist keeps when the first layer's
scores are those of an untrained network: it says little about a trained selector, whose first-layer ranking is
trained through the second layer. GT recall is not defined there (the images' labels are not V3Det categories).

``--write FILE`` replaces the section between ``<!-- BEGIN cq_dino_shortlist -->`` and ``<!-- END cq_dino_shortlist
-->`` of FILE (``--section``), as the scripts in ``tools/benchmarks/`` do.
"""
import argparse
import os
import os.path as osp
import platform
import sys
import time
from datetime import date
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # tools/
from _bootstrap import REPO_ROOT, import_queryvision_mm  # noqa: E402

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

DEFAULT_CONFIG = 'configs/cq_dino/demo_v3det.py'
DEFAULT_LAST_CHECKPOINT = 'work_dirs/cq_dino_demo_v3det/last_checkpoint'


# ---------------------------------------------------------------------------------------------------------------
# measures
def topk_overlap(exact: Tensor, short: Tensor) -> Tensor:
    """Per image, the fraction of the exact selection ``exact`` (B, K) that the shortlist's selection ``short``
    (B, K') also holds -> (B,)."""
    if exact.dim() != 2 or short.dim() != 2 or exact.size(0) != short.size(0):
        raise ValueError(f'topk_overlap: expected (B, K) index tensors, got {tuple(exact.shape)} and '
                         f'{tuple(short.shape)}')
    return torch.stack([torch.isin(e, s).float().mean() for e, s in zip(exact, short)])


def gt_recall(indices: Tensor, gt_labels: Sequence[Tensor]) -> List[Optional[float]]:
    """Per image, the fraction of its distinct ground-truth categories that ``indices`` (B, K) selects; None for an
    image without ground truth (left out of the mean, as ``QVCategoryQuerySelector.recall_at_k``)."""
    if len(gt_labels) != indices.size(0):
        raise ValueError(f'gt_recall: {indices.size(0)} selections but {len(gt_labels)} ground-truth lists')
    out = []
    for idx, gt in zip(indices, gt_labels):
        gt = torch.unique(torch.as_tensor(gt, dtype=torch.long))
        out.append(torch.isin(gt, idx.cpu()).float().mean().item() if gt.numel() else None)
    return out


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _median(values: List[float]) -> float:
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


@torch.no_grad()
def compare_selectors(selector, feats: Sequence[Tensor], gt_labels: Optional[Sequence[Tensor]],
                      shortlists: Sequence[int]) -> Dict:
    """Run ``selector.forward_select`` on every C5 map of ``feats`` (each (1, C_img, H, W)) exactly and with each
    ``shortlist`` S; ``gt_labels`` (one label tensor per image, or None). ``selector.shortlist`` is restored.

    Returns ``dict(exact=dict(recall, time_s), shortlists={S: dict(overlap, recall, time_s, max_logit_diff)},
    num_images, num_with_gt)``; ``max_logit_diff`` = largest |logit| difference between the two-step and the exact
    selector on the shortlisted categories (the remaining layers see each category alone, so it is ~0)."""
    if not feats:
        raise ValueError('compare_selectors: no images')
    k, c = selector.topk, selector.num_classes
    bad = [s for s in shortlists if not k <= s <= c]
    if bad:
        raise ValueError(f'compare_selectors: shortlist sizes {bad} outside [topk={k}, num_classes={c}]')
    saved, was_training = selector.shortlist, selector.training
    selector.eval()
    try:
        def run(s, x):
            selector.shortlist = s
            t = time.perf_counter()
            out = selector.forward_select(x)
            return out, time.perf_counter() - t

        run(None, feats[0])  # warm-up: fills the cached category side
        # per image, the exact selector and every S in turn, so that a changing machine load hits all alike
        idx = {m: [] for m in [None, *shortlists]}
        times = {m: [] for m in idx}
        diff = dict.fromkeys(shortlists, 0.0)
        for x in feats:
            exact, t = run(None, x)
            idx[None].append(exact['indices'])
            times[None].append(t)
            for s in shortlists:
                out, t = run(s, x)
                idx[s].append(out['indices'])
                times[s].append(t)
                kept = out['logits'].isfinite()
                diff[s] = max(diff[s], (out['logits'][kept] - exact['logits'][kept]).abs().max().item())
        exact_idx = torch.cat(idx[None])
        result = dict(num_images=len(feats), exact=dict(time_s=_median(times[None])), shortlists={})
        if gt_labels is not None:
            result['exact']['recall'] = _mean(gt_recall(exact_idx, gt_labels))
            result['num_with_gt'] = sum(len(torch.unique(torch.as_tensor(g))) > 0 for g in gt_labels)
        for s in shortlists:
            short_idx = torch.cat(idx[s])
            entry = dict(overlap=topk_overlap(exact_idx, short_idx).mean().item(), time_s=_median(times[s]),
                         max_logit_diff=diff[s])
            if gt_labels is not None:
                entry['recall'] = _mean(gt_recall(short_idx, gt_labels))
            result['shortlists'][s] = entry
    finally:
        selector.shortlist = saved
        selector.train(was_training)
    return result


# ---------------------------------------------------------------------------------------------------------------
# data and models
def default_checkpoint() -> Optional[str]:
    path = osp.join(REPO_ROOT, DEFAULT_LAST_CHECKPOINT)
    if not osp.isfile(path):
        return None
    with open(path) as f:
        ckpt = f.read().strip()
    if not osp.isfile(ckpt):
        raise FileNotFoundError(f'{path} names {ckpt!r}, which does not exist')
    return ckpt


def load_demo(config: str, checkpoint: Optional[str], split: str, num_images: int, cfg_options=None):
    """The config's model (weights from ``checkpoint``, else its own initialisation) and, for the first
    ``num_images`` images of the ``split`` dataloader's dataset (0 = all): the raw C5 maps and ground-truth labels."""
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.runner import load_checkpoint

    from mmdet.registry import DATASETS, MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    loader = cfg.get(f'{split}_dataloader')
    if loader is None:
        raise KeyError(f'{config}: has no {split}_dataloader')
    model = MODELS.build(cfg.model)
    if checkpoint:
        load_checkpoint(model, checkpoint, map_location='cpu', logger='silent')
    else:
        model.init_weights()
    model.eval()
    dataset = DATASETS.build(loader.dataset)
    n = len(dataset) if num_images <= 0 else min(num_images, len(dataset))
    feats, gts = [], []
    with torch.no_grad():
        for i in range(n):
            data = model.data_preprocessor(pseudo_collate([dataset[i]]), False)
            c5, _ = model._features(data['inputs'], use_neck=False)
            feats.append(c5)
            gts.append(data['data_samples'][0].gt_instances.labels.clone())
    return model, feats, gts


def scale_selector(num_classes: int, topk: int, img_in_channels: int, chunk_size: int = 1024):
    """Randomly initialised selector (seed 0) with the official V3Det widths (configs/cq_dino/v3det_r50.py's
    ``language_model`` without the tree relation)."""
    from queryvision_mm.models.layers import QVCategoryQuerySelector
    torch.manual_seed(0)
    return QVCategoryQuerySelector(num_classes=num_classes, img_in_channels=img_in_channels, embed_dims=768,
                                   kv_dims=512, num_layers=2, num_heads=4, ffn_dims=3072, dropout=0.1, topk=topk,
                                   relation=None, chunk_size=chunk_size).eval()


# ---------------------------------------------------------------------------------------------------------------
# report
def _fmt(v, spec='.3f'):
    return '-' if v is None else format(v, spec)


def table(result: Dict, with_recall: bool, time_unit: str = 'ms') -> List[str]:
    scale = 1e3 if time_unit == 'ms' else 1.0
    k_head = 'overlap with the exact top-K'
    head = f'| selector | S | {k_head} |' + (' GT recall@K |' if with_recall else '') + \
        f' selector {time_unit} / image | speed-up vs exact | max logit diff on the shortlist |'
    lines = [head, '|' + '---|' * (head.count('|') - 1)]
    ex = result['exact']
    lines.append('| exact | - | 1.000 |' + (f" {_fmt(ex.get('recall'))} |" if with_recall else '') +
                 f" {ex['time_s'] * scale:.{1 if time_unit == 'ms' else 2}f} | 1.00x | - |")
    for s, r in sorted(result['shortlists'].items()):
        lines.append(f'| two-step | {s:,} | {r["overlap"]:.3f} |' +
                     (f" {_fmt(r.get('recall'))} |" if with_recall else '') +
                     f" {r['time_s'] * scale:.{1 if time_unit == 'ms' else 2}f} | {ex['time_s'] / r['time_s']:.2f}x |"
                     f" {r['max_logit_diff']:.1e} |")
    return lines


def report(demo: Optional[Dict], demo_info: Dict, scale: Optional[Dict], scale_info: Dict, command: str) -> str:
    lines = [f'Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch '
             f'{torch.__version__}, {torch.get_num_threads()} threads, fp32, {date.today().isoformat()}. '
             f'Command: `{command}`. Times: selector only (`forward_select`, B = 1, '
             'median over the images after a warm-up that fills the category cache), not the backbone.', '']
    if demo is not None:
        lines += [f"**Trained demo** (`{demo_info['config']}`, checkpoint `{demo_info['checkpoint']}`, "
                  f"{demo['num_images']} {demo_info['split']} images, {demo.get('num_with_gt', 0)} with ground "
                  f"truth; C = {demo_info['num_classes']}, K = {demo_info['topk']}):", '']
        lines += table(demo, with_recall=True, time_unit='ms')
        lines.append('')
    else:
        lines += [f"**Trained demo**: missing (no checkpoint: `{DEFAULT_LAST_CHECKPOINT}` does not exist and no "
                  '`--checkpoint` was given; `bash tools/run_demo.sh configs/cq_dino/demo_v3det.py` trains one).', '']
    if scale is not None:
        lines += [f"**Random selector at V3Det scale** (C = {scale_info['num_classes']:,}, K = "
                  f"{scale_info['topk']}, official widths 768 / kv 512 / 2 layers / 4 heads / FFN 3072, no relation "
                  f"module, random initialisation (seed 0), chunk 1,024; image features: the EfficientNet-Lite0 C5 "
                  f"({scale_info['img_in_channels']} channels) of {scale['num_images']} demo {demo_info['split']} "
                  f"images {scale_info['feature_source']}; overlap = recall@{scale_info['topk']} of the exact "
                  f"top-{scale_info['topk']}):", '']
        lines += table(scale, with_recall=False, time_unit='s')
        lines += ['', 'A randomly initialised selector says little about a trained one: its first-layer ranking is '
                  'that of untrained weights, while training shapes the first layer only through the second. The '
                  'overlap of a trained V3Det selector has to be measured on its checkpoint (not available here).']
    return '\n'.join(lines).rstrip()


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config', nargs='?', default=DEFAULT_CONFIG)
    p.add_argument('--checkpoint', default=None, help=f'default: the file named in {DEFAULT_LAST_CHECKPOINT}')
    p.add_argument('--split', default='val', choices=['val', 'test'])
    p.add_argument('--shortlists', type=int, nargs='+', default=None,
                   help='S values for the config\'s selector (default: K, K+2, ..., C)')
    p.add_argument('--num-images', type=int, default=0, help='first N images of the split (0: all)')
    p.add_argument('--scale', action='store_true', help='also the random selector at V3Det scale')
    p.add_argument('--scale-classes', type=int, default=13204)
    p.add_argument('--scale-topk', type=int, default=100)
    p.add_argument('--scale-shortlists', type=int, nargs='+', default=[200, 500, 1000, 2000])
    p.add_argument('--scale-images', type=int, default=12, help='first N images for the V3Det-scale run')
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s)')
    p.add_argument('--write', default=None, help='markdown file whose --section to replace')
    p.add_argument('--section', default='cq_dino_shortlist')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                   help='config overrides, e.g. val_dataloader.dataset.data_root=/tmp/demo_v3det/')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import_queryvision_mm()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = args.config if osp.isfile(args.config) else osp.join(REPO_ROOT, args.config)
    if not osp.isfile(config):
        raise FileNotFoundError(f'config not found: {args.config}')
    checkpoint = args.checkpoint or default_checkpoint()
    if args.checkpoint and not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {args.checkpoint}')
    model, feats, gts = load_demo(config, checkpoint, args.split, args.num_images, args.cfg_options)
    selector = model.language_model
    demo, demo_info = None, dict(config=args.config, checkpoint=checkpoint, split=args.split,
                                 num_classes=selector.num_classes, topk=selector.topk)
    if checkpoint:
        k, c = selector.topk, selector.num_classes
        shortlists = args.shortlists or sorted(set(list(range(k, c, 2)) + [c]))
        t = time.time()
        demo = compare_selectors(selector, feats, gts, shortlists)
        print(f'[{time.time() - t:.0f} s] demo: {demo}', file=sys.stderr)
    scale, scale_info = None, {}
    if args.scale:
        sel = scale_selector(args.scale_classes, args.scale_topk, feats[0].size(1))
        scale_feats = feats[:args.scale_images] if args.scale_images > 0 else feats
        scale_info = dict(num_classes=args.scale_classes, topk=args.scale_topk, img_in_channels=feats[0].size(1),
                          feature_source='(backbone of the trained demo checkpoint)' if checkpoint else
                          '(ImageNet-pretrained backbone, no demo checkpoint)')
        t = time.time()
        scale = compare_selectors(sel, scale_feats, None, args.scale_shortlists)
        print(f'[{time.time() - t:.0f} s] scale: {scale}', file=sys.stderr)
    command = ' '.join(['python tools/analysis_tools/selector_shortlist_recall.py'] +
                       list(sys.argv[1:] if argv is None else argv))
    text = report(demo, demo_info, scale, scale_info, command)
    print(text)
    if args.write:
        sys.path.insert(0, osp.join(REPO_ROOT, 'tools', 'benchmarks'))
        from bench_semi_detr import write_section
        write_section(args.write, args.section, text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
