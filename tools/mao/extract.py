#!/usr/bin/env python
"""MaO: describe every gallery image (proposals -> masks -> crops -> encoder -> stage B), index, evaluate queries.

    python tools/mao/extract.py CONFIG [--work-dir DIR] [--device cpu|cuda|cuda:N|auto] [--amp fp16|bf16]
        [--batch-size N] [--on-error error|skip] [--cfg-options k=v ...]
    torchrun --nproc_per_node N tools/mao/extract.py CONFIG --launcher pytorch [...]     # gallery sharded over N

Writes ``WORK_DIR/gallery_cache/`` (one descriptor + boxes + SAM masks (COCO RLE) per image in two levels of hash
sub-folders; a re-run resumes; a cache of another configuration or other weights is refused),
``WORK_DIR/index/`` (FAISS index + gallery paths) and ``WORK_DIR/results.json`` (mAP, Recall@K over the dataset's
queries, top-10 rankings). Unreadable images are an error naming the file, or with ``--on-error skip`` left out
and listed in results.json. ``--device`` places every model (OWLv2, SAM, encoder, LeGrad / stage B); with
``--launcher`` each rank describes its share of the gallery on its own device (``cuda`` = the rank's GPU; gloo on
CPU-only machines) and rank 0 merges the shards, builds the index and evaluates.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from _bootstrap import import_queryvision_mm  # noqa: E402


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('--work-dir', default=None)
    p.add_argument('--on-error', choices=('error', 'skip'), default='error')
    p.add_argument('--device', default=None, help="cpu | cuda | cuda:N | auto (default: the config's "
                   "describer.device, else cpu)")
    p.add_argument('--amp', choices=('fp16', 'bf16'), default=None,
                   help='autocast OWLv2, SAM and the plain embeddings (stage B stays fp32)')
    p.add_argument('--batch-size', type=int, default=None, help='gallery images per batch (describer.batch_size)')
    p.add_argument('--launcher', choices=('none', 'pytorch', 'slurm', 'mpi'), default='none')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p.parse_args(argv)


def main(argv=None):
    from mmengine.config import Config
    args = parse_args(argv)
    import_queryvision_mm()
    from mmengine.registry import DefaultScope

    from queryvision_mm.apis.mao import run_extract
    from queryvision_mm.apis.mao_extract import init_distributed, set_describer_options
    from queryvision_mm.utils.cli import default_work_dir
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    work_dir = args.work_dir or cfg.get('work_dir') or default_work_dir(args.config)
    set_describer_options(cfg, device=args.device, amp=args.amp, batch_size=args.batch_size)
    if args.launcher != 'none':
        from queryvision_mm.utils.cli import shutdown_distributed
        init_distributed(cfg, args.launcher)
    DefaultScope.get_instance('qv_mao_extract', scope_name=cfg.get('default_scope', 'mmpretrain'))
    res = run_extract(cfg, work_dir, on_error=args.on_error)
    if args.launcher != 'none':   # not on errors: torchrun stops the other ranks then, a barrier would hang
        shutdown_distributed()
    if res is None:      # a rank other than 0: rank 0 reports
        return 0
    summary = {k: v for k, v in res.items() if k not in ('rankings', )}
    print(json.dumps(summary, indent=1))
    print(f'index: {osp.join(work_dir, "index")}, results: {osp.join(work_dir, "results.json")}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
