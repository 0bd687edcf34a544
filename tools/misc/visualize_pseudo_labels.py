"""Draw a Semi-DETR model's teacher pseudo-labels beside its student predictions.

    python tools/misc/visualize_pseudo_labels.py CONFIG CHECKPOINT --out out.png [--num-images 4]

Images come from the unlabeled training set (second dataset of the ConcatDataset) run through the
test pipeline, so boxes are drawn in the network-input frame, by QVPseudoLabelVisualizer (mmdet's
DetLocalVisualizer; README "Visualization").
"""
import argparse
import copy
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # tools/
from _bootstrap import import_queryvision_mm  # noqa: E402

import_queryvision_mm()

from mmengine.config import Config, DictAction
from mmengine.runner import load_checkpoint

from mmdet.registry import DATASETS, MODELS
from mmdet.utils import register_all_modules
from queryvision_mm.visualization import run_pseudo_label_visualization


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--out', required=True, help='output PNG')
    parser.add_argument('--num-images', type=int, default=4)
    parser.add_argument('--score-thr', type=float, default=0.3, help='student score threshold')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args()


def main():
    args = parse_args()
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model = MODELS.build(cfg.model)
    load_checkpoint(model, args.checkpoint, map_location='cpu')
    ds_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    ds_cfg = ds_cfg.datasets[-1] if ds_cfg.get('type') == 'ConcatDataset' else ds_cfg
    ds_cfg.pipeline = cfg.test_dataloader.dataset.pipeline
    ds_cfg.test_mode = True
    dataset = DATASETS.build(ds_cfg)
    out = run_pseudo_label_visualization(model, dataset, args.out, args.num_images, args.score_thr)
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
