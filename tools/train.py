#!/usr/bin/env python
# Copyright (c) queryvision_mm contributors. All rights reserved.
"""Train a detector with queryvision_mm.

Same command line and logic as mmdet 3.3's ``tools/train.py``; additionally it imports ``queryvision_mm``
(registers our modules into mmdet's registries and enables safe ``weights_only`` checkpoint loading) and
supports ``--launcher pytorch`` on CPU-only machines (gloo, see ``queryvision_mm/utils/dist.py``).

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--auto-scale-lr] [--resume [CKPT]] ...
    bash tools/dist_train.sh CONFIG NUM_PROCS [...]
"""
import argparse
import importlib.util
import os
import os.path as osp
import sys

from mmengine.config import Config, DictAction

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector (queryvision_mm)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', default=False, help='enable automatic-mixed-precision training')
    parser.add_argument('--auto-scale-lr', action='store_true', help='enable automatically scaling LR.')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='If specify checkpoint path, resume from it, while if not specify, try to auto resume from the '
        'latest checkpoint in the work directory.')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override some settings in the used config, the key-value pair in xxx=yyy format will be merged '
        'into config file. If the value to be overwritten is a list, it should be like key="[a,b]" or key=a,b '
        'It also allows nested list/tuple values, e.g. key="[(a,b),(c,d)]" Note that the quotation marks are '
        'necessary and that no white space is allowed.')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0); torchrun sets LOCAL_RANK instead
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def import_queryvision_mm():
    """Import the plugin (repo root on ``sys.path`` if it is not installed) and apply the shims."""
    if importlib.util.find_spec('queryvision_mm') is None:
        sys.path.insert(0, REPO_ROOT)
    import queryvision_mm  # noqa: F401  registers all modules
    from queryvision_mm.utils import setup_safe_checkpoint_loading
    setup_safe_checkpoint_loading()  # idempotent; already applied by the import


def main(argv=None):
    args = parse_args(argv)
    import_queryvision_mm()

    from mmdet.registry import RUNNERS
    from mmdet.utils import setup_cache_size_limit_of_dynamo
    from mmengine.runner import Runner

    from queryvision_mm.utils import setup_cpu_distributed

    # Reduce the number of repeated compilations and improve training speed.
    setup_cache_size_limit_of_dynamo()

    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    # work_dir priority: CLI > config > ./work_dirs/<config stem>
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])

    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'

    if args.auto_scale_lr:
        auto_scale_lr = cfg.get('auto_scale_lr', None)
        if not auto_scale_lr or 'enable' not in auto_scale_lr or 'base_batch_size' not in auto_scale_lr:
            raise RuntimeError('Can not find "auto_scale_lr" or "auto_scale_lr.enable" or '
                               '"auto_scale_lr.base_batch_size" in your configuration file.')
        cfg.auto_scale_lr.enable = True

    # resume priority: explicit checkpoint > auto resume from work_dir
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    # CPU-only `--launcher pytorch`: gloo process group + CPU DDP wrapper, before the Runner exists
    setup_cpu_distributed(cfg, args.launcher)

    # the config's `randomness` (seed, deterministic) is used as is
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    runner.train()


if __name__ == '__main__':
    main()
