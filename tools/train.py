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

from _bootstrap import add_common_args, export_local_rank, import_queryvision_mm  # noqa: E402  (tools/ on sys.path)


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
    add_common_args(parser)
    args = parser.parse_args(argv)
    export_local_rank(args)
    return args


def main(argv=None):
    args = parse_args(argv)
    import_queryvision_mm()

    from queryvision_mm.utils.cli import build_runner, enable_auto_scale_lr, load_tool_config, shutdown_distributed

    cfg = load_tool_config(args.config, args.cfg_options, args.launcher, args.work_dir)

    if args.amp:
        # QVAmpOptimWrapper = mmengine's AmpOptimWrapper on a GPU (fp16 autocast + dynamic loss scale; keep
        # optim_wrapper.dtype='bfloat16' from the config for bf16), bf16 autocast without loss scaling on CPU
        if not cfg.get('optim_wrapper'):
            raise SystemExit(f'--amp: {args.config} has no optim_wrapper (nothing to train)')
        wrapper_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper_type not in ('OptimWrapper', 'AmpOptimWrapper', 'QVAmpOptimWrapper'):
            raise SystemExit(f'--amp needs optim_wrapper.type OptimWrapper, got {wrapper_type}')
        cfg.optim_wrapper.type = 'QVAmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')

    if args.auto_scale_lr:  # mmdet and mmpretrain configs (the latter have no auto_scale_lr.enable)
        enable_auto_scale_lr(cfg)

    # resume priority: explicit checkpoint > auto resume from work_dir
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    # CPU-only `--launcher pytorch`: gloo process group + CPU DDP wrapper, before the Runner exists;
    # the config's `randomness` (seed, deterministic) is used as is
    runner = build_runner(cfg)
    runner.train()
    del runner  # torn down before the process group, while the interpreter is alive
    shutdown_distributed()


if __name__ == '__main__':
    main()
