"""The CQ-DINO configs parse with the official values and their models build (R50, offline overrides)."""
import os.path as osp

import pytest
from mmengine.config import Config

from mmdet.registry import MODELS

from conftest import REPO

EXPECT = {
    'v3det_r50': dict(classes=13204, topk=100, relation='QVTreeAggregator', levels=4, img_in=2048),
    'v3det_swinb': dict(classes=13204, topk=100, relation='QVTreeAggregator', levels=4, img_in=1024),
    'v3det_swinl': dict(classes=13204, topk=100, relation='QVTreeAggregator', levels=5, img_in=1536),
    'coco_r50': dict(classes=80, topk=30, relation='QVCategorySelfAttention', levels=4, img_in=2048),
    'coco_swinl': dict(classes=80, topk=30, relation='QVCategorySelfAttention', levels=5, img_in=1536),
}


def load(name):
    return Config.fromfile(osp.join(REPO, 'configs', 'cq_dino', f'{name}.py'))


@pytest.mark.parametrize('name', sorted(EXPECT))
def test_config_values(name):
    cfg, exp = load(name), EXPECT[name]
    sel = cfg.model.language_model
    assert cfg.model.type == 'QVCQDINO' and sel.type == 'QVCategoryQuerySelector'
    assert sel.num_classes == exp['classes'] and sel.topk == exp['topk']
    assert cfg.model.bbox_head.contrastive_cfg.max_text_len == exp['topk'], 'K = max_text_len'
    assert sel.relation.type == exp['relation'] and sel.img_in_channels == exp['img_in']
    assert cfg.model.neck.num_outs == exp['levels']
    assert cfg.model.test_cfg.max_per_img == 300
    assert cfg.optim_wrapper.optimizer.lr == 4e-4
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys['language_model'].lr_mult == 0.01
    assert cfg.train_cfg.max_epochs == 24
    coco, recall = cfg.val_evaluator
    assert coco.type == 'QVCocoMetric' and recall.type == 'QVCategoryRecallMetric'  # CocoMetric + mp_eval_procs
    # the paper's protocol on V3Det and COCO (official configs): AP at 300 detections, multi-process evaluator
    assert coco.use_mp_eval and coco.proposal_nums == [300] and [m.type for m in cfg.test_evaluator] == [
        'QVCocoMetric', 'QVCategoryRecallMetric'] and cfg.test_evaluator[0].proposal_nums == [300]
    if name.startswith('v3det'):
        assert cfg.model.selector_loss.gamma_neg == 7.0 and cfg.model.selector_loss.clip == 0.05
        assert cfg.train_dataloader.dataset.type == 'V3DetDataset'
    else:
        assert cfg.model.selector_loss.loss_weight == 0.1 and cfg.model.hierarchy is None


@pytest.mark.parametrize('name', ['v3det_r50', 'coco_r50'])
def test_r50_models_build_offline(name):
    cfg = load(name)
    m = cfg.model
    m.backbone.init_cfg = None  # no torchvision download
    m.language_model.embed_file = None
    if name.startswith('v3det'):  # the 13,204-category tree file is not shipped: relations are tested elsewhere
        m.language_model.relation = None
        m.hierarchy = None
    model = MODELS.build(m)
    assert model.language_model.category_embed.shape == (EXPECT[name]['classes'], 768)
    assert model.bbox_head.max_text_len == EXPECT[name]['topk']
    assert len(model.encoder.text_layers) == 0


@pytest.mark.parametrize('name,stage2', [('v3det_stage1_swinb', 'v3det_swinb'), ('v3det_stage1_r50', 'v3det_r50'),
                                          ('v3det_stage1_swinl', 'v3det_swinl'), ('coco_stage1_r50', 'coco_r50'),
                                          ('coco_stage1_swinl', 'coco_swinl')])
def test_stage1_configs(name, stage2):
    cfg, full = load(name), load(stage2)
    assert cfg.model.selector_only is True
    assert [m.type for m in cfg.val_evaluator] == ['QVCategoryRecallMetric']
    assert cfg.train_cfg.max_epochs == 10  # paper: 10 epochs of stage 1
    assert cfg.load_from is None
    # same architecture as the stage-2 model that loads the checkpoint
    for key in ('backbone', 'language_model', 'neck'):
        a, b = cfg.model[key].to_dict(), full.model[key].to_dict()
        a.pop('init_cfg', None), b.pop('init_cfg', None)
        assert a == b, key


@pytest.mark.parametrize('name', ['coco_r50', 'v3det_r50'])
def test_evaluator_computes_ap_at_300_detections(tmp_path, name):
    """One image, one ground truth whose only matching detection is ranked 150th of its category: AP counts it at
    maxDets 300 (the paper's AP) and not at 100 (pycocotools' default summary, which the COCO configs used)."""
    import json

    import torch
    from mmdet.registry import METRICS
    cfg = load(name)
    classes = [f'c{i}' for i in range(3)]
    ann = tmp_path / 'val.json'
    ann.write_text(json.dumps(dict(
        images=[dict(id=1, file_name='a.jpg', width=400, height=400)],
        annotations=[dict(id=1, image_id=1, category_id=1, bbox=[300, 300, 50, 50], area=2500, iscrowd=0)],
        categories=[dict(id=i + 1, name=c) for i, c in enumerate(classes)])))
    metric = METRICS.build(dict(cfg.test_evaluator[0], ann_file=str(ann), mp_eval_procs=1))
    metric.dataset_meta = dict(classes=classes)
    n = 150
    assert cfg.model.test_cfg.max_per_img >= max(metric.proposal_nums) >= n, 'the head keeps enough detections'
    boxes = torch.tensor([[float(2 * i % 200), float(2 * i // 200), 2 * i % 200 + 20., 2 * i // 200 + 20.]
                          for i in range(n - 1)] + [[300., 300., 350., 350.]])
    scores = torch.linspace(0.9, 0.1, n)  # the true box has the lowest score
    metric.process({}, [dict(img_id=1, ori_shape=(400, 400), pred_instances=dict(
        bboxes=boxes, scores=scores, labels=torch.zeros(n, dtype=torch.long)))])
    res = metric.evaluate(1)
    assert res['coco/bbox_mAP'] > 0, res  # 1/150 precision at recall 1 -> AP ~ 0.007 at maxDets 300 (0 at 100)
