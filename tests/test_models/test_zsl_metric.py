"""QVZSLMultiLabelMetric against hand-computed cases (QKS protocol: row/column filters, AP 0 for a kept column
without positives, unknown targets ignored, micro F1@k), and QVZSLMultiLabelDataset's checks."""
import json

import pytest
import torch

from queryvision_mm.datasets import QVZSLMultiLabelDataset
from queryvision_mm.evaluation.metrics import QVZSLMultiLabelMetric

DEFAULT_SCOPE = 'mmpretrain'


def run(metric, rows):
    metric.process({}, [dict(pred_score=torch.tensor(s), gt_label=torch.tensor(p), gt_negative=torch.tensor(n),
                             img_path=f'{i}.jpg') for i, (s, p, n) in enumerate(rows)])
    return metric.compute_metrics(metric.results)


def test_complement_negatives_nus_wide_style():
    m = QVZSLMultiLabelMetric(num_seen=2, topk=(1, ), splits=('seen', 'zsl', 'gzsl'))
    out = run(m, [([0.9, 0.1, 0.8, 0.95], [0, 2], []),
                  ([0.2, 0.7, 0.4, 0.6], [1], []),
                  ([0.5, 0.5, 0.1, 0.9], [3], []),
                  ([0.3, 0.2, 0.2, 0.1], [], [])])  # no positive at all: dropped from every split
    # ZSL: images 0 and 2; col 2 AP 1, col 3 AP 1/2 (a negative ranked first)
    assert out['zsl/num_images'] == 2 and out['zsl/mAP'] == pytest.approx(75.0)
    assert out['zsl/P@1'] == pytest.approx(50.0) and out['zsl/R@1'] == pytest.approx(50.0)
    assert out['zsl/F1@1'] == pytest.approx(50.0)
    assert out['zsl/score'] == pytest.approx(125.0)
    # GZSL: images 0, 1, 2; APs 1, 1, 1, 1/2; top-1 hits: image 1 and 2 of 3, 4 positives
    assert out['gzsl/mAP'] == pytest.approx(87.5)
    assert out['gzsl/F1@1'] == pytest.approx(100 * 4 / 7)
    assert out['seen/mAP'] == pytest.approx(100.0) and out['seen/num_images'] == 2


def test_explicit_negatives_open_images_style():
    m = QVZSLMultiLabelMetric(num_seen=1, topk=(1, ), splits=('zsl', 'gzsl'), negatives='explicit')
    out = run(m, [([0.6, 0.7, 0.9], [0], [1]),  # label 2 unknown
                  ([0.2, 0.8, 0.1], [1], [0, 2]),
                  ([0.5, 0.5, 0.5], [], [2])])  # no positive: dropped
    # GZSL: column 2 is kept (a known negative) but has no positive -> AP 0 in the mean
    assert out['gzsl/num_labels'] == 3 and out['gzsl/mAP'] == pytest.approx(100 * 2 / 3)
    # top-1 of image 0 is label 2 (unknown): not a hit
    assert out['gzsl/P@1'] == pytest.approx(50.0) and out['gzsl/R@1'] == pytest.approx(50.0)
    assert out['zsl/num_images'] == 1 and out['zsl/mAP'] == pytest.approx(50.0) and out['zsl/F1@1'] == 100.0


def test_metric_errors():
    with pytest.raises(ValueError, match='unknown splits'):
        QVZSLMultiLabelMetric(num_seen=1, splits=('unseen', ))
    m = QVZSLMultiLabelMetric(num_seen=1, negatives='explicit')
    with pytest.raises(KeyError, match='gt_negative'):
        m.process({}, [dict(pred_score=torch.zeros(2), gt_label=torch.tensor([0]), img_path='a.jpg')])
    m = QVZSLMultiLabelMetric(num_seen=2, splits=('zsl', ))
    with pytest.raises(ValueError, match='ZSL needs unseen columns'):
        run(m, [([0.1, 0.2], [0], [])])


def write(tmp_path, data_list, classes=('a', 'b', 'c'), num_seen=2, negatives='complement'):
    path = tmp_path / 'ann.json'
    path.write_text(json.dumps(dict(metainfo=dict(classes=list(classes), num_seen=num_seen, negatives=negatives),
                                    data_list=data_list)))
    return str(path)


def test_dataset_loads_and_checks(tmp_path):
    ann = write(tmp_path, [dict(img_path='x/1.jpg', gt_label=[0, 2], gt_negative=[1])])
    ds = QVZSLMultiLabelDataset(ann, data_prefix='imgs', pipeline=[], lazy_init=False)
    assert ds.metainfo['num_seen'] == 2 and ds.metainfo['classes'] == ('a', 'b', 'c')
    info = ds.get_data_info(0)
    assert info['img_path'].endswith('imgs/x/1.jpg') and info['gt_label'] == [0, 2] and info['gt_negative'] == [1]
    with pytest.raises(ValueError, match=r'ann.json: x/1.jpg: gt_label 2 is not a seen label index'):
        QVZSLMultiLabelDataset(ann, seen_only=True, pipeline=[])
    bad = write(tmp_path, [dict(img_path='y.jpg', gt_label=[7])])
    with pytest.raises(ValueError, match=r"y.jpg: gt_label 7 is not a label index < 3"):
        QVZSLMultiLabelDataset(bad, pipeline=[])
    with pytest.raises(ValueError, match='classes differ .* at index 1'):
        QVZSLMultiLabelDataset(ann, metainfo=dict(classes=('a', 'x', 'c')), pipeline=[])
    missing = tmp_path / 'm.json'
    missing.write_text(json.dumps(dict(metainfo=dict(classes=['a']), data_list=[])))
    with pytest.raises(KeyError, match='no "num_seen"'):
        QVZSLMultiLabelDataset(str(missing), pipeline=[])
