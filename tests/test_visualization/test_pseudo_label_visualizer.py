"""QVPseudoLabelVisualizer (mmdet DetLocalVisualizer): where and how boxes are drawn, and that the pseudo-label
picture tool (run_pseudo_label_visualization) draws through it."""
import uuid

import mmcv
import numpy as np
import torch
from mmengine.config import Config
from mmengine.structures import InstanceData

from mmdet.registry import DATASETS, MODELS, VISUALIZERS
from mmdet.structures import DetDataSample
from mmdet.visualization import DetLocalVisualizer

from conftest import DEMO_CONFIG, shrink_semi_detr_cfg

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def sample():
    # teacher: A (score 0.9 >= 0.4, class 0 red) solid, B (0.1, class 1 green) dashed and faint;
    # student: C (0.8, class 2 blue) drawn, D (0.1 < pred_score_thr) not drawn
    gt = InstanceData(bboxes=torch.tensor([[10., 10, 60, 60], [30, 30, 90, 90]]), labels=torch.tensor([0, 1]),
                      scores=torch.tensor([0.9, 0.1]))
    pred = InstanceData(bboxes=torch.tensor([[20., 20, 80, 80], [5, 50, 45, 95]]), labels=torch.tensor([2, 0]),
                        scores=torch.tensor([0.8, 0.1]))
    return DetDataSample(gt_instances=gt, pred_instances=pred)


def visualizer(**kw):
    cfg = dict(type='QVPseudoLabelVisualizer', name=f'test-{uuid.uuid4().hex}', captions=False, pseudo_thr=0.4)
    cfg.update(kw)
    vis = VISUALIZERS.build(cfg)
    vis.dataset_meta = dict(classes=('a', 'b', 'c'), palette=[RED, GREEN, BLUE])
    return vis


def edge(img, xs, ys):
    """Brightest pixel per channel over a small window around (x, y) ranges (lines are ~3 px wide)."""
    return img[ys[0]:ys[1], xs[0]:xs[1]].reshape(-1, 3).max(axis=0)


def test_candidates_solid_or_dashed_beside_student_predictions():
    vis = visualizer()
    assert isinstance(vis, DetLocalVisualizer)
    data = sample()
    img = vis.draw_pseudo_labels(np.zeros((100, 100, 3), np.uint8), data, pred_score_thr=0.3)
    assert img.shape == (100, 200, 3), 'left: teacher candidates, right: student predictions (mmdet layout)'
    # A: solid red right edge (x = 60), alpha 0.8 on black
    a = edge(img, (58, 63), (44, 56))
    assert a[0] > 180 and a[1] < 40 and a[2] < 40
    # B: green, faint (alpha 0.35) and dashed: along its right edge (x = 90) some rows are background
    column = img[40:90, 88:93].max(axis=1)  # (rows, 3)
    assert 60 < column[:, 1].max() < 120, 'below-threshold candidate drawn faint'
    assert (column[:, 1] < 10).sum() >= 8 and (column[:, 1] > 60).sum() >= 20, 'dashed: gaps along the edge'
    # the solid box has no gaps along its right edge
    solid = img[44:58, 58:63].max(axis=1)
    assert (solid[:, 0] > 180).all()
    # C: blue on the right panel (x offset 100), D (score 0.1 <= 0.3) is not drawn
    c = edge(img, (178, 183), (40, 60))
    assert c[2] > 180 and c[0] < 40
    assert img[58:76, 143:148].max() == 0, 'student prediction below pred_score_thr is not drawn'
    assert img[40:90, 188:193].max() == 0, 'candidates are not drawn on the student side'
    # the caller's sample is not modified
    assert 'below_pseudo_thr' not in data.gt_instances


def test_pseudo_thr_moves_candidates_between_solid_and_dashed():
    img = visualizer(pseudo_thr=0.05).draw_pseudo_labels(np.zeros((100, 100, 3), np.uint8), sample())
    column = img[40:90, 88:93].max(axis=1)
    assert (column[:, 1] > 180).all(), 'score 0.1 >= pseudo_thr 0.05: solid'


def test_captions_and_mmdet_backends(tmp_path):
    vis = visualizer(captions=True)
    plain = visualizer().draw_pseudo_labels(np.zeros((100, 100, 3), np.uint8), sample())
    captioned = vis.draw_pseudo_labels(np.zeros((100, 100, 3), np.uint8), sample())
    assert (captioned[85:, :50] != plain[85:, :50]).any() and (captioned[85:, 100:150] != plain[85:, 100:150]).any()
    # add_datasample keeps mmdet's out_file behaviour
    out = str(tmp_path / 'x.png')
    vis.add_datasample('x', np.zeros((100, 100, 3), np.uint8), sample(), out_file=out)
    assert mmcv.imread(out).shape == (100, 200, 3)


def test_tool_function_draws_through_the_visualizer(tiny_demo_data, tmp_path, monkeypatch):
    """run_pseudo_label_visualization (tools/misc/visualize_pseudo_labels.py) uses QVPseudoLabelVisualizer with
    the model's pseudo-label threshold, candidates on the gt side and student predictions on the pred side."""
    from queryvision_mm.visualization import QVPseudoLabelVisualizer, run_pseudo_label_visualization
    calls = []
    original = QVPseudoLabelVisualizer.add_datasample

    def spy(self, name, image, data_sample=None, **kw):
        calls.append((self, image.shape, data_sample))
        return original(self, name, image, data_sample, **kw)

    monkeypatch.setattr(QVPseudoLabelVisualizer, 'add_datasample', spy)
    torch.manual_seed(0)
    cfg = shrink_semi_detr_cfg(Config.fromfile(DEMO_CONFIG), data_root=tiny_demo_data)
    model = MODELS.build(cfg.model)
    model.init_weights()  # DINO's level_embed etc. are torch.empty until init_weights
    for branch in model.teacher.bbox_head.cls_branches:  # a confident teacher: some candidates >= 0.4
        branch.bias.data.fill_(0.0)
    ds_cfg = cfg.train_dataloader.dataset.datasets[-1]
    ds_cfg.pipeline = cfg.test_dataloader.dataset.pipeline
    ds_cfg.test_mode = True
    dataset = DATASETS.build(ds_cfg)
    out = str(tmp_path / 'sub' / 'pseudo.png')
    assert run_pseudo_label_visualization(model, dataset, out, num_images=2, min_size=200) == out
    assert len(calls) == 2
    vis, shape, data_sample = calls[0]
    assert type(vis) is QVPseudoLabelVisualizer and vis.pseudo_thr == model.semi_train_cfg.cls_pseudo_thr
    assert vis.dataset_meta['classes'] == ('circle', 'square', 'triangle')
    assert min(shape[:2]) == 200, 'small images enlarged for legible labels'
    assert 'scores' in data_sample.gt_instances and len(data_sample.gt_instances) > 0
    assert 'pred_instances' in data_sample
    h, w = mmcv.imread(out).shape[:2]
    assert w == max(2 * c[1][1] for c in calls) and h > 2 * 200, 'two rows of (candidates | predictions) pairs'
