"""QVCocoMetric: mmdet's multi-process COCO evaluation with a configurable number of processes and category blocks
(mmdet's COCOevalMP: always 8), same numbers as the single-process CocoMetric, mmdet's module left as it was."""
import json

import numpy as np
import pytest
import torch

from mmdet.evaluation.metrics import CocoMetric
from mmdet.evaluation.metrics import coco_metric as mmdet_coco_metric
from mmdet.registry import METRICS

from queryvision_mm.testing.demo_data import DEMO_V3DET_CLASSES, generate_demo_v3det
from queryvision_mm.evaluation.metrics import coco_metric_mp


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    return generate_demo_v3det(str(tmp_path_factory.mktemp('dv3')), num_train=2, num_val=12, image_size=96)


def predictions(ann_file, seed=0):
    """Jittered ground truth (some with the wrong label) plus random false positives, per val image."""
    rng = np.random.default_rng(seed)
    coco = json.load(open(ann_file))
    cat_to_label = {c['id']: i for i, c in enumerate(coco['categories'])}
    out = []
    for im in coco['images']:
        anns = [a for a in coco['annotations'] if a['image_id'] == im['id']]
        boxes, labels = [], []
        for a in anns:
            x, y, w, h = a['bbox']
            boxes.append([x, y, x + w, y + h] + rng.normal(0, 2, 4))
            labels.append(cat_to_label[a['category_id']] if rng.random() > 0.2 else rng.integers(len(cat_to_label)))
        for _ in range(5):
            x, y = rng.uniform(0, 60, 2)
            boxes.append([x, y, x + rng.uniform(5, 30), y + rng.uniform(5, 30)])
            labels.append(rng.integers(len(cat_to_label)))
        out.append(dict(img_id=im['id'], ori_shape=(im['height'], im['width']),
                        pred_instances=dict(bboxes=torch.tensor(np.array(boxes), dtype=torch.float32),
                                            scores=torch.tensor(rng.uniform(0.05, 1, len(boxes)), dtype=torch.float32),
                                            labels=torch.tensor(labels))))
    return out


def run(metric, preds):
    metric.dataset_meta = dict(classes=DEMO_V3DET_CLASSES)
    metric.process({}, preds)
    return metric.evaluate(len(preds))


@pytest.mark.parametrize('procs,chunks', [(1, None), (1, 5), (2, None), (2, 5)])
def test_same_numbers_as_single_process(demo, monkeypatch, procs, chunks):
    preds = predictions(demo['val'])
    common = dict(ann_file=demo['val'], metric='bbox', proposal_nums=(1, 10, 100), classwise=True)
    reference = run(CocoMetric(**common), preds)
    pools = []
    real_pool = coco_metric_mp.mp.Pool
    monkeypatch.setattr(coco_metric_mp.mp, 'Pool', lambda n: pools.append(n) or real_pool(n))
    original = mmdet_coco_metric.COCOevalMP
    metric = METRICS.build(dict(type='QVCocoMetric', use_mp_eval=True, mp_eval_procs=procs, mp_eval_chunks=chunks,
                                **common))
    got = run(metric, preds)
    np.testing.assert_equal(got, reference)  # NaN for a category without ground truth in both
    assert 0 < reference['coco/bbox_mAP'] < 1
    assert pools == ([] if procs == 1 else [procs]), 'process count as configured (1 = in this process)'
    assert mmdet_coco_metric.COCOevalMP is original, "mmdet's module is restored"


def test_blocks_keep_category_order():
    from pycocotools.cocoeval import Params
    ev = coco_metric_mp.QVCOCOevalMP.__new__(coco_metric_mp.QVCOCOevalMP)
    ev.params = Params(iouType='bbox')
    ev.params.catIds, ev.params.imgIds, ev.params.maxDets = [5, 3, 9, 1, 7], [2, 1], [10]
    ev.nproc, ev.nchunks = 1, 3
    seen = []
    ev._evaluateImg = lambda chunk: seen.append(chunk) or [c for c in chunk]
    ev.evaluate()
    assert seen == [[1, 3], [5, 7], [9]] and ev.evalImgs == [1, 3, 5, 7, 9]  # pycocotools' category-major order
    with pytest.raises(ValueError, match='mp_eval_procs'):
        METRICS.build(dict(type='QVCocoMetric', mp_eval_procs=0))
