"""Pseudo-label quality of a Semi-DETR / Sparse Semi-DETR checkpoint against the hidden ground truth of the
unlabeled images (issue 15: why does semi-supervised training win or lose?).

    python tools/analysis_tools/pseudo_label_quality.py CONFIG CHECKPOINT [--num-images 100] [--json OUT]
        [--thrs 0.3 0.4 0.5]

The unlabeled dataset of the config (last dataset of the training ``ConcatDataset``) is read with the *test*
pipeline (its annotation file must hold the boxes: true for the embedded demo data and for COCO-Partial built by
``tools/dataset_converters/split_coco.py``, whose unlabeled file keeps them). For each image the teacher produces its
pseudo-label candidates exactly as in training (``model.teacher_pseudo_labels``: class-wise NMS, adaptive threshold,
the model's own filters); a candidate is a true positive when it overlaps an unmatched ground-truth box of its class
with IoU >= 0.5 (greedy by score, as COCO matching). Reported per score threshold (0.4 = the paper's set A):
precision, recall, pseudo-labels per image, and the images without any pseudo-label. A run without the hidden
boxes is refused with the file named.
"""
import argparse
import copy
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # tools/
from _bootstrap import import_queryvision_mm  # noqa: E402

import_queryvision_mm()

import torch  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.runner import load_checkpoint  # noqa: E402

from mmdet.registry import DATASETS, MODELS  # noqa: E402
from mmdet.structures.bbox import bbox_overlaps  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--num-images', type=int, default=100, help='first N unlabeled images (0: all)')
    p.add_argument('--thrs', type=float, nargs='+', default=[0.3, 0.4, 0.5])
    p.add_argument('--iou', type=float, default=0.5)
    p.add_argument('--json', default=None, help='write the result here')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p.parse_args(argv)


def match(pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels, iou_thr):
    """Greedy matching by descending score: a prediction is a true positive if it overlaps a not yet matched
    ground-truth box of its own class with IoU >= ``iou_thr``. Returns a bool per prediction (input order) and the
    number of matched ground-truth boxes."""
    tp = torch.zeros(len(pred_boxes), dtype=torch.bool)
    if len(pred_boxes) == 0 or len(gt_boxes) == 0:
        return tp, 0
    iou = bbox_overlaps(pred_boxes, gt_boxes)
    iou[pred_labels[:, None] != gt_labels[None]] = -1
    taken = torch.zeros(len(gt_boxes), dtype=torch.bool)
    for i in torch.argsort(pred_scores, descending=True).tolist():
        cand = iou[i].clone()
        cand[taken] = -1
        j = int(cand.argmax())
        if cand[j] >= iou_thr:
            tp[i] = True
            taken[j] = True
    return tp, int(taken.sum())


def quality(model, dataset, num_images, thrs, iou_thr):
    n = len(dataset) if num_images <= 0 else min(num_images, len(dataset))
    stats = {thr: dict(tp=0, pred=0, hit=0, empty=0) for thr in thrs}
    num_gt = 0
    with torch.no_grad():
        for idx in range(n):
            item = dataset[idx]
            data = model.data_preprocessor(dict(inputs=[item['inputs']], data_samples=[item['data_samples']]), False)
            inputs, samples = data['inputs'], data['data_samples']
            gt = samples[0].gt_instances
            if 'bboxes' not in gt:
                raise ValueError(f'{dataset.ann_file}: image {samples[0].img_path} has no boxes in the test '
                                 'pipeline: the unlabeled annotation file must keep the hidden ground truth')
            gt_boxes = gt.bboxes.tensor if hasattr(gt.bboxes, 'tensor') else gt.bboxes
            # candidates are in the network-input frame, the ground truth in the original one
            scale = gt_boxes.new_tensor(samples[0].metainfo['scale_factor']).repeat(2)
            gt_boxes = gt_boxes * scale
            num_gt += len(gt_boxes)
            cand = model.teacher_pseudo_labels(inputs, samples)[0]
            boxes = cand.bboxes.tensor if hasattr(cand.bboxes, 'tensor') else cand.bboxes
            for thr in thrs:
                keep = cand.scores >= thr
                tp, hit = match(boxes[keep], cand.labels[keep], cand.scores[keep], gt_boxes, gt.labels, iou_thr)
                s = stats[thr]
                s['tp'] += int(tp.sum())
                s['pred'] += int(keep.sum())
                s['hit'] += hit
                s['empty'] += int(keep.sum() == 0)
    out = dict(images=n, gt_per_img=num_gt / max(n, 1), thresholds={})
    for thr, s in stats.items():
        out['thresholds'][f'{thr:g}'] = dict(
            precision=s['tp'] / s['pred'] if s['pred'] else float('nan'), recall=s['hit'] / max(num_gt, 1),
            pseudo_per_img=s['pred'] / max(n, 1), imgs_without=s['empty'] / max(n, 1))
    return out


def main(argv=None):
    args = parse_args(argv)
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model = MODELS.build(cfg.model)
    if not hasattr(model, 'teacher_pseudo_labels'):
        raise SystemExit(f'{args.config}: {type(model).__name__} is not a Semi-DETR model (no teacher_pseudo_labels)')
    load_checkpoint(model, args.checkpoint, map_location='cpu', logger='silent')
    model.eval()
    ds_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    ds_cfg = ds_cfg.datasets[-1] if ds_cfg.get('type') == 'ConcatDataset' else ds_cfg
    ds_cfg.pipeline = copy.deepcopy(cfg.test_dataloader.dataset.pipeline)
    ds_cfg.test_mode = True
    ds_cfg.filter_cfg = None
    dataset = DATASETS.build(ds_cfg)
    result = quality(model, dataset, args.num_images, args.thrs, args.iou)
    result.update(config=args.config, checkpoint=args.checkpoint)
    for thr, r in result['thresholds'].items():
        print(f'thr {thr}: precision {r["precision"]:.3f} recall {r["recall"]:.3f} '
              f'pseudo-labels/img {r["pseudo_per_img"]:.2f} images without {r["imgs_without"]:.2f}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    main()
