#!/usr/bin/env python
# Copyright (c) queryvision_mm contributors. All rights reserved.
"""Image demo in mmdet 3.3's style for queryvision_mm models.

Detectors (Semi-DETR, Sparse Semi-DETR, CQ-DINO) run through ``QVDetInferencer`` (mmdet's ``DetInferencer`` that
also accepts our ``QVLoadImageFromFile`` test pipelines); mmpretrain classifiers (QKS, ``default_scope='mmpretrain'``)
through ``QVMultiLabelInferencer`` (top-k labels with names and scores).

    python demo/image_demo.py IMG CONFIG --weights CKPT --out-dir DIR --pred-score-thr 0.3 --device cpu
    python demo/image_demo.py IMG configs/qks/demo_photos.py --weights CKPT --topk 5 --device cpu

IMG is an image file or a folder of images; CONFIG a config file or a model name of ``model-index.yml``
(e.g. ``cq_dino_demo_v3det``; no weights are published, so pass ``--weights``, e.g. a checkpoint of tools/train.py,
which also stores the class names). Detectors write ``DIR/vis/<image>`` (boxes with scores >= --pred-score-thr drawn)
and ``DIR/preds/<image>.json`` (mmdet's ``labels`` / ``scores`` / ``bboxes``; CQ-DINO's labels are global category
ids); classifiers write ``DIR/preds/<image>.json`` (``pred_labels`` / ``pred_classes`` / ``pred_label_scores``).
"""
import importlib.util
import json
import os
import os.path as osp
import sys
from argparse import ArgumentParser

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def parse_args(argv=None):
    parser = ArgumentParser(description='queryvision_mm image demo (mmdet style)')
    parser.add_argument('inputs', type=str, help='an image file or a folder of images')
    parser.add_argument('model', type=str, help='config file, or a model name of model-index.yml')
    parser.add_argument('--weights', default=None, help='checkpoint file')
    parser.add_argument('--out-dir', type=str, default='outputs', help='output directory of images / predictions')
    parser.add_argument('--device', default=None, help='device for inference (default: cuda:0 if available, else cpu)')
    parser.add_argument('--pred-score-thr', type=float, default=0.3, help='bbox score threshold (drawing)')
    parser.add_argument('--batch-size', type=int, default=1, help='inference batch size')
    parser.add_argument('--show', action='store_true', help='display the results in a window')
    parser.add_argument('--no-save-vis', action='store_true', help='do not save the drawn images')
    parser.add_argument('--no-save-pred', action='store_true', help='do not save the predictions')
    parser.add_argument('--print-result', action='store_true', help='print the predictions')
    parser.add_argument('--palette', default='none', choices=['coco', 'voc', 'citys', 'random', 'none'],
                        help='detector colour palette (none: the checkpoint\'s, else mmdet\'s default)')
    parser.add_argument('--topk', type=int, default=5, help='classifiers: number of labels reported')
    parser.add_argument('--thr', type=float, default=None, help='classifiers: keep top-k labels with score >= thr')
    args = parser.parse_args(argv)
    if args.no_save_vis and args.no_save_pred:
        args.out_dir = ''
    if args.device is None:
        import torch
        args.device = 'cuda:0' if torch.cuda.is_available() else 'cpu'
    return args


def _import_package():
    if importlib.util.find_spec('queryvision_mm') is None:  # a source checkout that is not installed
        sys.path.insert(0, REPO_ROOT)
    import queryvision_mm  # noqa: F401  (detection modules; the inferencers import the QKS plugin and apply the
    # safe weights_only checkpoint loading themselves)


def _is_classifier(model: str) -> bool:
    from mmengine.config import Config

    from queryvision_mm.apis.inferencers import find_model
    path = model if osp.isfile(model) else find_model(model)[0]
    return Config.fromfile(path).get('default_scope') == 'mmpretrain'


def _image_list(inputs: str):
    if osp.isdir(inputs):
        exts = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
        return sorted(osp.join(inputs, f) for f in os.listdir(inputs) if f.lower().endswith(exts))
    return [inputs]


def run_classifier(args):
    from queryvision_mm.apis import QVMultiLabelInferencer
    inferencer = QVMultiLabelInferencer(args.model, pretrained=args.weights or False, device=args.device,
                                        topk=args.topk, thr=args.thr)
    images = _image_list(args.inputs)
    show_dir = osp.join(args.out_dir, 'vis') if args.out_dir and not args.no_save_vis else None
    results = inferencer(images, batch_size=args.batch_size, show=args.show, show_dir=show_dir)
    for img, res in zip(images, results):
        res = {k: (v.tolist() if hasattr(v, 'tolist') else v) for k, v in res.items()}
        if args.print_result:
            print(osp.basename(img), json.dumps({k: v for k, v in res.items() if k != 'pred_scores'}))
        if args.out_dir and not args.no_save_pred:
            os.makedirs(osp.join(args.out_dir, 'preds'), exist_ok=True)
            name = osp.splitext(osp.basename(img))[0] + '.json'
            with open(osp.join(args.out_dir, 'preds', name), 'w') as f:
                json.dump(res, f)
    return results


def run_detector(args):
    from queryvision_mm.apis import QVDetInferencer
    inferencer = QVDetInferencer(model=args.model, weights=args.weights, device=args.device, palette=args.palette)
    return inferencer(args.inputs, batch_size=args.batch_size, out_dir=args.out_dir, no_save_vis=args.no_save_vis,
                      no_save_pred=args.no_save_pred, pred_score_thr=args.pred_score_thr, show=args.show,
                      print_result=args.print_result)


def main(argv=None):
    args = parse_args(argv)
    _import_package()
    result = run_classifier(args) if _is_classifier(args.model) else run_detector(args)
    if args.out_dir and not (args.no_save_vis and args.no_save_pred):
        print(f'results have been saved at {args.out_dir}')
    return result


if __name__ == '__main__':
    main()
