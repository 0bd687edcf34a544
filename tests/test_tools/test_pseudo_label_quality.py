"""tools/analysis_tools/pseudo_label_quality.py: greedy same-class matching of teacher pseudo-labels against the
hidden ground truth (precision / recall of issue 15's analysis)."""
import importlib.util
import os.path as osp

import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _tool():
    spec = importlib.util.spec_from_file_location(
        'qv_pseudo_label_quality', osp.join(REPO, 'tools', 'analysis_tools', 'pseudo_label_quality.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_greedy_same_class_matching_counts_each_ground_truth_once():
    match = _tool().match
    gt = torch.tensor([[0., 0., 10., 10.], [20., 20., 30., 30.]])
    gt_labels = torch.tensor([0, 1])
    boxes = torch.tensor([
        [0., 0., 10., 10.],  # exact hit of gt 0 (class 0)
        [0., 0., 10., 9.],  # duplicate of gt 0: already taken -> false positive
        [20., 20., 30., 30.],  # right place, wrong class -> false positive
        [50., 50., 60., 60.],  # nothing there
    ])
    labels = torch.tensor([0, 0, 0, 1])
    scores = torch.tensor([0.5, 0.9, 0.8, 0.7])  # the duplicate scores higher: it takes gt 0 first
    tp, hit = match(boxes, labels, scores, gt, gt_labels, 0.5)
    assert tp.tolist() == [False, True, False, False]
    assert hit == 1
    # no predictions / no ground truth
    tp, hit = match(boxes[:0], labels[:0], scores[:0], gt, gt_labels, 0.5)
    assert tp.numel() == 0 and hit == 0
    tp, hit = match(boxes, labels, scores, gt[:0], gt_labels[:0], 0.5)
    assert not tp.any() and hit == 0
