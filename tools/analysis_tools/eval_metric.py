#!/usr/bin/env python
# Copyright (c) queryvision_mm contributors. All rights reserved.
"""Evaluate predictions dumped by ``tools/test.py --out`` with the config's evaluator, offline (one process, no
collective to time out): the path for V3Det, whose COCO evaluation over 13,204 classes takes hours.

    # 1. predict (any number of GPUs); format_only skips the COCO evaluation there (it writes DIR/preds.bbox.json)
    tools/dist_test.sh CONFIG CKPT 8 --out DIR/preds.pkl \
        --cfg-options test_evaluator.0.format_only=True test_evaluator.0.outfile_prefix=DIR/preds
    # 2. evaluate (CPU only; e.g. fewer evaluation processes on a smaller machine)
    python tools/analysis_tools/eval_metric.py CONFIG DIR/preds.pkl [--cfg-options test_evaluator.0.mp_eval_procs=4] \
        [--out DIR/metrics.json]

The pickle is read with restricted unpickling (tensors, arrays and plain values only; see
``queryvision_mm/utils/prediction_pickle.py``). The dump has no ground truth (mmdet's ``DumpDetResults`` drops it):
metrics that need ``gt_instances`` (``QVCategoryRecallMetric``) get them from the config's test dataset, by ``img_id``.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # tools/ (for _bootstrap)
from _bootstrap import import_queryvision_mm  # noqa: E402


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Evaluate dumped predictions (tools/test.py --out) offline')
    parser.add_argument('config', help='the config the predictions were made with')
    parser.add_argument('pkl_results', help='pickle written by tools/test.py --out')
    parser.add_argument('--evaluator', choices=['test', 'val'], default='test',
                        help='which evaluator and dataset of the config (default: test_evaluator, test_dataloader)')
    parser.add_argument('--out', help='write the metrics to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. test_evaluator.0.mp_eval_procs=4')
    return parser.parse_args(argv)


def add_ground_truth(predictions: list, dataset) -> int:
    """Put each image's non-ignored ground-truth boxes and labels (as the test pipeline's ``PackDetInputs`` would)
    into predictions without ``gt_instances``; returns how many were filled."""
    import numpy as np
    import torch
    by_id = {}
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        inst = [x for x in info.get('instances', []) if not x.get('ignore_flag', 0)]
        by_id[info['img_id']] = dict(
            labels=torch.as_tensor([x['bbox_label'] for x in inst], dtype=torch.long),
            bboxes=torch.as_tensor(np.array([x['bbox'] for x in inst], dtype=np.float32).reshape(-1, 4)))
    filled = 0
    for pred in predictions:
        if 'gt_instances' not in pred:
            if pred['img_id'] not in by_id:
                raise KeyError(f"img_id {pred['img_id']} of the predictions is not in the config's dataset")
            pred['gt_instances'] = by_id[pred['img_id']]
            filled += 1
    return filled


def evaluate(cfg, predictions: list, which: str = 'test') -> dict:
    from mmengine.evaluator import Evaluator
    from mmengine.registry import init_default_scope

    from mmdet.registry import DATASETS
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    dataset = DATASETS.build(cfg[f'{which}_dataloader'].dataset)
    if len(predictions) != len(dataset):
        raise ValueError(f'{len(predictions)} predictions for a {which} set of {len(dataset)} images: a partial dump '
                         'would give a silently smaller test set')
    add_ground_truth(predictions, dataset)
    evaluator = Evaluator(cfg[f'{which}_evaluator'])
    evaluator.dataset_meta = dataset.metainfo
    return evaluator.offline_evaluate(predictions)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import_queryvision_mm()
    from mmengine.config import Config

    from queryvision_mm.utils.prediction_pickle import load_predictions
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    metrics = evaluate(cfg, load_predictions(args.pkl_results), args.evaluator)
    print(json.dumps(metrics, indent=1))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(metrics, f, indent=1)
    return metrics


if __name__ == '__main__':
    main()
