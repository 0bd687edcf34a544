"""Sparse Semi-DETR end to end: the five paper configs train on the demo data through the stage switch;
tools/train.py + tools/test.py on the demo config report AP_s/m/l and the duplicate rate."""
import os
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config

from conftest import REPO, shrink_semi_detr_cfg
from test_integration.test_tools import PY, run, state

DEMO_CLASSES = ('circle', 'square', 'triangle')


def on_demo_data(name, data_root, max_iters, switch_iter):
    """A paper config (real model/pipelines/hooks, shrunk) pointed at the demo data."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'sparse_semi_detr', f'{name}.py'))
    lab, unlab = cfg.train_dataloader.dataset.datasets
    for ds, ann in ((lab, 'instances_labeled.json'), (unlab, 'instances_unlabeled.json')):
        ds.update(type='CocoDataset', data_root=data_root, ann_file=f'annotations/{ann}',
                  data_prefix=dict(img='images/'), metainfo=dict(classes=DEMO_CLASSES))
    val = cfg.val_dataloader.dataset
    val.update(data_root=data_root, ann_file='annotations/instances_val.json', data_prefix=dict(img='images/'),
               metainfo=dict(classes=DEMO_CLASSES))
    cfg.test_dataloader = cfg.val_dataloader
    return shrink_semi_detr_cfg(cfg, data_root=data_root, max_iters=max_iters, switch_iter=switch_iter)


# coco_1pct / coco_5pct differ from coco_10pct only in annotation file names and Table 8 values (checked for all five
# configs in test_models/test_sparse_semi_detr.py::test_paper_configs_have_table8_values); training them too cost
# ~30 s of the suite budget. coco_full differs from coco_10pct in Table 8 values and ratio only and runs with
# QV_SLOW_TESTS=1 (CI budget of 15 min on 2 cores); voc keeps its own values in CI
_SLOW = pytest.mark.skipif(os.environ.get('QV_SLOW_TESTS') != '1',
                           reason='same code path as coco_10pct with other Table 8 values: set QV_SLOW_TESTS=1')


@pytest.mark.parametrize('name', ['coco_10pct', pytest.param('coco_full', marks=_SLOW), 'voc'])
def test_paper_config_trains_on_demo_data_through_the_switch(name, tiny_demo_data, tmp_path):
    from mmengine.runner import Runner
    cfg = on_demo_data(name, tiny_demo_data, max_iters=2, switch_iter=1)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.test_cfg = cfg.test_dataloader = cfg.test_evaluator = None
    cfg.train_cfg.val_interval = 10
    cfg.work_dir = str(tmp_path)
    runner = Runner.from_cfg(cfg)
    student = {k: v.clone() for k, v in runner.model.student.state_dict().items()}
    runner.train()
    model = runner.model
    assert type(model).__name__ == 'QVSparseSemiDETR' and not model.one_to_many, 'switched to one-to-one'
    logs = runner.message_hub.log_scalars
    extra = logs['train/unsup_num_extra_queries'].data[0].tolist()  # one value per iteration
    assert extra[0] > 0 and extra[-1] == 0, 'refined queries in stage one only'
    assert all(torch.isfinite(torch.as_tensor(v.current())) for k, v in logs.items() if 'loss' in k)
    changed = [k for k, v in model.student.state_dict().items() if v.dtype.is_floating_point
               and not torch.equal(v, student[k])]
    assert any(k.startswith('bbox_head') for k in changed)


def test_demo_config_train_then_test_reports_small_objects_and_duplicates(tiny_demo_data, tmp_path):
    cfg = shrink_semi_detr_cfg(Config.fromfile(osp.join(REPO, 'configs/sparse_semi_detr/demo_shapes.py')),
                               data_root=tiny_demo_data, max_iters=4, switch_iter=2)
    path = str(tmp_path / 'sparse.py')
    cfg.dump(path)
    work = str(tmp_path / 'work')
    proc, out = run([PY, 'tools/train.py', path, '--work-dir', work])
    assert proc.returncode == 0, out[-4000:]
    assert 'iteration 2: switching to one-to-one matching' in out
    assert 'student/dup/rate' in out and 'teacher/coco/bbox_mAP_s' in out
    ckpt = osp.join(work, 'iter_4.pth')
    sd = state(ckpt)['state_dict']
    assert any(k.startswith('qrm.') for k in sd) and not any(k.startswith('projector.') for k in sd)
    assert 'student.bbox_head.o2m_assigner' not in sd  # assigners hold no weights
    proc, out = run([PY, 'tools/test.py', path, ckpt, '--work-dir', str(tmp_path / 'test')])
    assert proc.returncode == 0, out[-4000:]
    for key in ('coco/bbox_mAP_s', 'coco/bbox_mAP_m', 'coco/bbox_mAP_l', 'dup/rate', 'dup/per_img'):
        assert re.search(re.escape(key) + r': -?[0-9.]+', out), key
