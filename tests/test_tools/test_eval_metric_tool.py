"""Offline evaluation (tools/analysis_tools/eval_metric.py) of a ``tools/test.py --out`` dump: restricted unpickling,
the config's evaluator (QVCocoMetric in its multi-process path + the selector recall, whose ground truth the dump
lacks), the same metrics as evaluating online, and clear errors for foreign code or a partial dump."""
import copy
import os
import os.path as osp
import pickle

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.evaluator import Evaluator
from mmengine.structures import InstanceData

from mmdet.evaluation import DumpDetResults
from mmdet.structures import DetDataSample

from conftest import REPO, load_module_from_path
from queryvision_mm.testing.demo_data import generate_demo_v3det
from queryvision_mm.utils.prediction_pickle import load_predictions

TOOL = osp.join(REPO, 'tools', 'analysis_tools', 'eval_metric.py')


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('offline_eval')
    demo = generate_demo_v3det(str(tmp / 'data'), num_train=2, num_val=10, image_size=96)
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'cq_dino', 'demo_v3det.py'))
    cfg.test_dataloader.dataset.data_root = demo['data_root']
    cfg.test_evaluator[0].ann_file = demo['val']
    cfg_path = str(tmp / 'cfg.py')
    cfg.dump(cfg_path)
    # online samples as the model + test pipeline give them: predictions, selector output and ground truth
    from mmdet.registry import DATASETS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        gt_boxes = np.array([x['bbox'] for x in info['instances']], dtype=np.float32).reshape(-1, 4)
        gt_labels = np.array([x['bbox_label'] for x in info['instances']], dtype=np.int64)
        s = DetDataSample(metainfo=dict(img_id=info['img_id'], img_path=info['img_path'],
                                        ori_shape=(info['height'], info['width']), scale_factor=(1.0, 1.0)))
        s.gt_instances = InstanceData(bboxes=torch.from_numpy(gt_boxes), labels=torch.from_numpy(gt_labels))
        boxes = np.concatenate([gt_boxes + rng.normal(0, 2, gt_boxes.shape), [[5, 5, 40, 40]]]).astype(np.float32)
        s.pred_instances = InstanceData(bboxes=torch.from_numpy(boxes),
                                        scores=torch.from_numpy(rng.uniform(0.1, 1, len(boxes)).astype(np.float32)),
                                        labels=torch.from_numpy(np.append(gt_labels, 0)))
        s.selected_categories = torch.from_numpy(rng.permutation(14)[:6])
        s.selector_scores = torch.rand(6)
        samples.append(s.to_dict())
    # the dump exactly as tools/test.py --out writes it (mmdet's DumpDetResults: ground truth removed)
    pkl = str(tmp / 'preds.pkl')
    dump = DumpDetResults(out_file_path=pkl)
    dump.process({}, copy.deepcopy(samples))
    dump.compute_metrics(dump.results)
    return dict(tmp=tmp, cfg=cfg, cfg_path=cfg_path, pkl=pkl, samples=samples)


def test_offline_metrics_equal_online(setup):
    tool = load_module_from_path('qv_eval_metric_tool', TOOL)
    out = str(setup['tmp'] / 'metrics.json')
    metrics = tool.main([setup['cfg_path'], setup['pkl'], '--out', out, '--cfg-options',
                         'test_evaluator.0.use_mp_eval=True', 'test_evaluator.0.mp_eval_procs=1'])
    assert osp.isfile(out)
    assert 'coco/bbox_mAP' in metrics and 'selector/recall@6' in metrics
    online = Evaluator(copy.deepcopy(setup['cfg'].test_evaluator))
    from mmdet.registry import DATASETS
    online.dataset_meta = DATASETS.build(setup['cfg'].test_dataloader.dataset).metainfo
    expected = online.offline_evaluate(copy.deepcopy(setup['samples']))
    np.testing.assert_equal(metrics, expected)
    assert 0 < metrics['coco/bbox_mAP'] <= 1


def test_dump_loads_without_arbitrary_code(setup, tmp_path):
    preds = load_predictions(setup['pkl'])
    assert len(preds) == 10 and 'gt_instances' not in preds[0]
    assert isinstance(preds[0]['pred_instances']['bboxes'], torch.Tensor)
    marker = tmp_path / 'still_here'
    marker.write_text('x')

    class Evil:
        def __reduce__(self):
            return os.remove, (str(marker), )

    bad = tmp_path / 'bad.pkl'
    bad.write_bytes(pickle.dumps([dict(img_id=1, x=Evil())]))
    with pytest.raises(pickle.UnpicklingError, match='refusing to load posix.remove'):
        load_predictions(str(bad))
    assert marker.exists()


def test_partial_dump_is_an_error(setup, tmp_path):
    tool = load_module_from_path('qv_eval_metric_tool3', TOOL)
    part = tmp_path / 'part.pkl'
    with open(setup['pkl'], 'rb') as f:
        part.write_bytes(pickle.dumps(pickle.load(f)[:7]))
    with pytest.raises(ValueError, match='7 predictions for a test set of 10 images'):
        tool.main([setup['cfg_path'], str(part)])
