"""QVCategoryRecallMetric against a hand-computed case (image recall, per-category recall, all-hit, empty images)."""
import pytest
import torch

from queryvision_mm.evaluation.metrics import QVCategoryRecallMetric


def sample(selected, gt):
    return dict(selected_categories=torch.tensor(selected), gt_instances=dict(labels=torch.tensor(gt)),
                img_path='x.jpg')


def test_hand_computed():
    m = QVCategoryRecallMetric()
    m.process({}, [sample([0, 1, 2], [0, 0, 5]),  # gt {0, 5}: 1 of 2
                   sample([3, 4, 5], [5]),  # gt {5}: 1 of 1
                   sample([0, 1, 2], [])])  # no ground truth: not averaged
    out = m.compute_metrics(m.results)
    assert out['recall@3'] == pytest.approx((0.5 + 1.0) / 2)
    # category 0: selected in 1 of its 1 images; category 5: in 1 of its 2 images
    assert out['category_recall'] == pytest.approx((1.0 + 0.5) / 2)
    assert out['all_hit'] == pytest.approx(0.5)
    assert out['num_empty'] == 1


def test_clear_errors():
    m = QVCategoryRecallMetric()
    with pytest.raises(KeyError, match='selected_categories'):
        m.process({}, [dict(gt_instances=dict(labels=torch.tensor([1])))])
    with pytest.raises(KeyError, match='LoadAnnotations'):
        m.process({}, [dict(selected_categories=torch.tensor([1]), img_path='a.jpg')])
    m.process({}, [sample([0], [])])
    with pytest.raises(ValueError, match='none of the 1 images has ground truth'):
        m.compute_metrics(m.results)
