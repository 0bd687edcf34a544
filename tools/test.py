#!/usr/bin/env python
# Copyright (c) queryvision_mm contributors. All rights reserved.
"""Test (and evaluate) a detector with queryvision_mm.

Same command line and logic as mmdet 3.3's ``tools/test.py``; additionally it imports ``queryvision_mm``
(registers our modules, safe ``weights_only`` checkpoint loading) and supports ``--launcher pytorch`` on
CPU-only machines (gloo).

    python tools/test.py CONFIG CHECKPOINT [--out results.pkl] [--show-dir DIR] [--tta] ...
    bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [...]
"""
import argparse
import warnings
from copy import deepcopy

from mmengine.config import ConfigDict

from _bootstrap import add_common_args, export_local_rank, import_queryvision_mm  # noqa: E402  (tools/ on sys.path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='MMDet test (and eval) a model (queryvision_mm)')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the directory to save the file containing evaluation metrics')
    parser.add_argument('--out', type=str, help='dump predictions to a pickle file for offline evaluation')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images will be saved. If specified, it will be automatically saved to '
        'the work_dir/timestamp/show_dir')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--interval', type=int, default=1,
                        help='mmpretrain configs: draw every N-th test sample with --show/--show-dir (as '
                        "mmpretrain's tools/test.py; mmdet's hook keeps its config's interval)")
    add_common_args(parser)
    parser.add_argument('--tta', action='store_true', help='test-time augmentation (flip by default)')
    args = parser.parse_args(argv)
    export_local_rank(args)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error('--out: the dump file must be a .pkl/.pickle file.')
    return args


def default_flip_tta_pipeline(test_pipeline):
    """mmdet's default TTA: the test pipeline with its final ``PackDetInputs`` replaced by a
    flip / no-flip ``TestTimeAug``."""
    pipeline = deepcopy(test_pipeline)
    pipeline[-1] = dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
            [
                dict(
                    type='PackDetInputs',
                    meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                               'flip_direction'))
            ],
        ])
    return pipeline


def enable_tta(cfg):
    """Wrap ``cfg.model`` in ``cfg.tta_model`` and use ``cfg.tta_pipeline`` (mmdet defaults if absent)."""
    if 'tta_model' not in cfg:
        warnings.warn('Cannot find ``tta_model`` in config, we will set it as default.')
        cfg.tta_model = dict(type='DetTTAModel', tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
    if 'tta_pipeline' not in cfg:
        warnings.warn('Cannot find ``tta_pipeline`` in config, we will set it as default.')
        dataset_cfg = cfg.test_dataloader.dataset
        while 'dataset' in dataset_cfg:  # dataset wrappers
            dataset_cfg = dataset_cfg['dataset']
        cfg.tta_pipeline = default_flip_tta_pipeline(dataset_cfg.pipeline)
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    return cfg


def main(argv=None):
    args = parse_args(argv)
    import_queryvision_mm()

    from mmdet.evaluation import DumpDetResults
    from queryvision_mm.utils.cli import (build_runner, enable_visualization, load_tool_config, resolve_show_dir,
                                          shutdown_distributed)

    cfg = load_tool_config(args.config, args.cfg_options, args.launcher, args.work_dir)

    # 'none': models whose weights all come from their config (e.g. zero-shot CLIP from its own weights file)
    cfg.load_from = None if args.checkpoint.lower() == 'none' else args.checkpoint

    if args.show or args.show_dir:  # mmdet's DetVisualizationHook or mmpretrain's VisualizationHook (enable=True)
        cfg = enable_visualization(cfg, args.show, args.show_dir, args.wait_time, args.interval)

    if args.tta:
        cfg = enable_tta(cfg)

    # CPU-only `--launcher pytorch`: gloo process group + CPU DDP wrapper, before the Runner exists;
    # the config's `randomness` (seed, deterministic) is used as is
    runner = build_runner(cfg)
    resolve_show_dir(runner, args.show_dir)  # mmpretrain's hook: WORK_DIR/<timestamp>/SHOW_DIR, as mmdet's

    if args.out is not None:  # dummy metric that dumps the predictions
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))

    runner.test()
    del runner  # torn down before the process group, while the interpreter is alive
    shutdown_distributed()


if __name__ == '__main__':
    main()
