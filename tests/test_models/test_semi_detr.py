"""QVSemiDETR built from the real configs (shrunk), loss/predict on CPU."""
import copy
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs

from conftest import REPO, shrink_semi_detr_cfg

CONFIGS = {
    'coco_1pct': dict(unsup_weight=4.0, switch=60000, iters=120000, classes=80),
    'coco_5pct': dict(unsup_weight=4.0, switch=60000, iters=120000, classes=80),
    'coco_10pct': dict(unsup_weight=4.0, switch=60000, iters=120000, classes=80),
    'coco_full': dict(unsup_weight=2.0, switch=120000, iters=240000, classes=80),
    'voc': dict(unsup_weight=4.0, switch=40000, iters=80000, classes=20),
}


def load(name):
    return Config.fromfile(osp.join(REPO, 'configs', 'semi_detr', f'{name}.py'))


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_paper_configs_build_with_spec_values(name):
    cfg = load(name)
    exp = CONFIGS[name]
    assert cfg.model.type == 'QVSemiDETR'
    assert cfg.model.semi_train_cfg.unsup_weight == exp['unsup_weight']
    assert cfg.model.semi_train_cfg.cls_pseudo_thr == 0.4
    assert cfg.train_cfg.max_iters == exp['iters']
    hooks = {h['type']: h for h in cfg.custom_hooks}
    assert hooks['QVStageSwitchHook']['switch_iter'] == exp['switch']
    assert hooks['QVMeanTeacherHook']['momentum'] == 0.001
    assert cfg.model.detector.bbox_head.num_classes == exp['classes']
    assert cfg.model.detector.num_queries == 900
    assert cfg.optim_wrapper.optimizer.lr == 1e-4 and cfg.optim_wrapper.clip_grad.max_norm == 0.1
    model = MODELS.build(cfg.model)
    assert type(model.student).__name__ == 'QVSemiDINO'
    assert model.student is not model.teacher
    assert not any(p.requires_grad for p in model.teacher.parameters())


def multi_branch_batch(model, n_sup=1, n_unsup=2, gt_sup=3, num_classes=80, shape=(3, 112, 144)):
    data = dict(inputs=dict(), data_samples=dict())
    for key, n, ngt in (('sup', n_sup, gt_sup), ('unsup_teacher', n_unsup, 0), ('unsup_student', n_unsup, 0)):
        d = demo_mm_inputs(n, [list(shape)] * n, num_items=[ngt] * n, num_classes=num_classes)
        for s in d['data_samples']:
            s.set_metainfo(dict(homography_matrix=np.eye(3, dtype=np.float32)))
        data['inputs'][key] = d['inputs']
        data['data_samples'][key] = d['data_samples']
    return model.data_preprocessor(data, True)


@pytest.fixture
def model():
    torch.manual_seed(0)
    cfg = shrink_semi_detr_cfg(load('coco_10pct'))
    m = MODELS.build(cfg.model)
    m.init_weights()
    m.train()
    return m


def confident_teacher(model, bias):
    for branch in model.teacher.bbox_head.cls_branches:
        branch.bias.data.fill_(bias)


def test_loss_keys_per_stage(model):
    confident_teacher(model, 2.0)
    batch = multi_branch_batch(model)
    model.set_stage(True)
    losses = model.loss(batch['inputs'], copy.deepcopy(batch['data_samples']))
    assert 'unsup_loss_consistency' in losses and 'unsup_d0.loss_consistency' in losses
    assert not any(k.startswith('unsup_dn_') for k in losses), 'no pseudo-label DN loss in stage one'
    assert any(k.startswith('sup_dn_') for k in losses), 'supervised DN is kept'
    assert losses['unsup_num_pseudo'] > 0
    assert losses['unsup_loss_cls'] > 0
    model.set_stage(False)
    losses = model.loss(batch['inputs'], copy.deepcopy(batch['data_samples']))
    assert all(float(v) == 0 for k, v in losses.items() if 'consistency' in k), 'consistency is off after the switch'
    assert losses['unsup_dn_loss_cls'] > 0
    for v in losses.values():
        assert torch.isfinite(torch.as_tensor(v)).all()


def test_gradients_reach_projector_never_teacher(model):
    confident_teacher(model, 2.0)
    batch = multi_branch_batch(model)
    model.set_stage(True)
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    total, _ = model.parse_losses(model.loss(batch['inputs'], batch['data_samples']))
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())
    assert all(p.grad is None for p in model.teacher.parameters())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    opt.step()
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k


@pytest.mark.parametrize('train_empty', [True, False])
def test_unlabeled_batch_without_pseudo_labels(model, train_empty):
    """An untrained / unsure teacher gives no pseudo-label at all: finite losses; the detection terms are
    all-background targets (official) or zero-weighted (mmdet's convention)."""
    confident_teacher(model, -30.0)
    model.semi_train_cfg.train_empty_pseudo = train_empty
    batch = multi_branch_batch(model)
    for stage in (True, False):
        model.set_stage(stage)
        losses = model.loss(batch['inputs'], copy.deepcopy(batch['data_samples']))
        assert losses['unsup_num_pseudo'] == 0
        assert losses['unsup_loss_bbox'] == 0 and losses['unsup_loss_iou'] == 0
        assert bool(losses['unsup_loss_cls'] > 0) is train_empty
        if not train_empty:
            unsup = [v for k, v in losses.items() if k.startswith('unsup_') and 'loss' in k]
            assert unsup and all(float(v) == 0 for v in unsup)
        total, _ = model.parse_losses(losses)
        assert torch.isfinite(total)
        total.backward()


def test_padding_slots_have_zero_content(model):
    """Consistency slots beyond an image's own boxes carry no content and stay out of the projector batch."""
    confident_teacher(model, 2.0)
    model.semi_train_cfg.use_gmm_mining = False
    model.set_stage(True)
    batch = multi_branch_batch(model)
    samples = copy.deepcopy(batch['data_samples'])
    _, info = model.get_pseudo_instances(batch['inputs']['unsup_teacher'], samples['unsup_teacher'])
    student = model.project_pseudo_instances(samples['unsup_teacher'], samples['unsup_student'])
    keep = [torch.arange(5), torch.arange(0)]  # 5 boxes in image 0, none in image 1
    extra_s, extra_t, w, valid = model._build_consistency_queries(keep, student, info)
    slots = 5
    assert extra_s['query'].shape[:2] == (2, slots * model.consistency_groups)
    q = extra_s['query'].view(2, model.consistency_groups, slots, -1)
    assert q[0].abs().sum(-1).gt(0).all(), 'real boxes get projected content'
    assert q[1, :, 1:].abs().sum() == 0, 'padding slots of the empty image are zero'
    assert valid.view(2, -1, slots)[1, :, 0].all() and not valid.view(2, -1, slots)[1, :, 1:].any()
    assert w.view(2, -1, slots)[1].sum() == 0, 'the dummy box of an empty image has weight 0'
    assert torch.equal(extra_t['query'], extra_s['query'].detach())


def test_encoder_loss_is_class_agnostic_by_default(model):
    head = model.student.bbox_head
    assert head.enc_class_agnostic
    confident_teacher(model, 2.0)
    batch = multi_branch_batch(model, n_sup=2)
    inputs, samples = batch['inputs']['sup'], batch['data_samples']['sup']
    model.set_stage(False)
    torch.manual_seed(0)
    agn = model.student.loss(inputs, copy.deepcopy(samples))
    head.enc_class_agnostic = False
    torch.manual_seed(0)
    aware = model.student.loss(inputs, copy.deepcopy(samples))
    assert not torch.isclose(agn['enc_loss_cls'], aware['enc_loss_cls'])
    torch.testing.assert_close(agn['loss_cls'], aware['loss_cls'])  # decoder losses unaffected


def test_missing_stage_hook_warns(model):
    confident_teacher(model, 2.0)
    batch = multi_branch_batch(model)
    with pytest.warns(UserWarning, match='QVStageSwitchHook'):
        model.loss(batch['inputs'], copy.deepcopy(batch['data_samples']))
    # once the hook has set the stage there is nothing to warn about
    fresh = MODELS.build(shrink_semi_detr_cfg(load('coco_10pct')).model)
    fresh.init_weights()  # DINO's level_embed is uninitialised memory until init_weights
    fresh.set_stage(True)
    import warnings
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter('always')
        fresh.loss(batch['inputs'], copy.deepcopy(batch['data_samples']))
    assert not any('QVStageSwitchHook' in str(w.message) for w in record)


def test_labeled_image_without_boxes(model):
    confident_teacher(model, 2.0)
    batch = multi_branch_batch(model, n_sup=2, gt_sup=0)
    for stage in (True, False):
        model.set_stage(stage)
        losses = model.loss(batch['inputs'], copy.deepcopy(batch['data_samples']))
        assert losses['sup_loss_cls'] > 0 and losses['sup_loss_bbox'] == 0
        total, _ = model.parse_losses(losses)
        assert torch.isfinite(total)


def test_extra_queries_do_not_leak_into_matching_or_dn(model):
    """Matching and denoising outputs are identical with and without prepended consistency queries."""
    det = model.student
    batch = multi_branch_batch(model, n_sup=2)
    inputs, samples = batch['inputs']['sup'], batch['data_samples']['sup']
    feats = det.extract_feat(inputs)
    extra = dict(query=torch.randn(2, 6, 256), reference_unact=torch.randn(2, 6, 4), num_groups=3)
    torch.manual_seed(1)
    plain = det.forward_transformer(feats, samples)
    torch.manual_seed(1)
    with_extra = det.forward_transformer(feats, samples, extra_queries=extra)
    assert with_extra['extra_hidden_states'].shape[:3] == (2, 2, 6)
    torch.testing.assert_close(with_extra['hidden_states'], plain['hidden_states'], rtol=1e-5, atol=1e-5)
    for a, b in zip(with_extra['references'], plain['references']):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # and the extra queries do react to their own input
    torch.manual_seed(1)
    other = dict(extra, query=extra['query'] + 1)
    changed = det.forward_transformer(feats, samples, extra_queries=other)
    assert not torch.allclose(changed['extra_hidden_states'], with_extra['extra_hidden_states'])


def test_predict_and_stage_buffer_roundtrip(model, tmp_path):
    batch = multi_branch_batch(model)
    model.eval()
    model.set_stage(False)
    out = model.predict(batch['inputs']['sup'], copy.deepcopy(batch['data_samples']['sup']))
    assert len(out[0].pred_instances) == model.student.test_cfg['max_per_img']
    model.set_stage(True)
    assert model.student.bbox_head.use_nms and model.teacher.bbox_head.use_nms
    # the stage travels with the weights
    model.set_stage(False)
    path = tmp_path / 'w.pth'
    torch.save(model.state_dict(), path)
    fresh = MODELS.build(shrink_semi_detr_cfg(load('coco_10pct')).model)
    assert fresh.one_to_many
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert not fresh.one_to_many and not fresh.student.bbox_head.use_nms


def test_pseudo_nms_flag(model):
    from mmdet.structures.bbox import bbox_overlaps
    confident_teacher(model, 2.0)
    model.semi_train_cfg.adaptive_pseudo_thr = False
    batch = multi_branch_batch(model)
    inputs, samples = batch['inputs']['unsup_teacher'], batch['data_samples']['unsup_teacher']
    with_nms = model.teacher_pseudo_labels(inputs, copy.deepcopy(samples))
    model.semi_train_cfg.pseudo_nms = False
    without = model.teacher_pseudo_labels(inputs, copy.deepcopy(samples))
    cap = model.teacher.bbox_head.nms_cfg['max_per_img']
    for a, b in zip(with_nms, without):
        assert len(b) == cap, 'without NMS every (query, class) pair above 0.01 competes for the cap'
        assert len(a) <= len(b)
        for c in a.labels.unique():
            boxes = a.bboxes[a.labels == c]
            iou = bbox_overlaps(boxes, boxes)
            iou.fill_diagonal_(0)
            assert (iou <= 0.6 + 1e-6).all(), 'NMS leaves no same-class pair above IoU 0.6'


def test_user_config_inheriting_ours(tmp_path):
    user = tmp_path / 'my_semi_detr.py'
    user.write_text(f"_base_ = '{osp.join(REPO, 'configs', 'semi_detr', 'coco_10pct.py')}'\n"
                    "model = dict(semi_train_cfg=dict(unsup_weight=2.0), detector=dict(num_queries=300))\n"
                    "custom_hooks = [dict(type='QVStageSwitchHook', switch_iter=80000)]\n")
    cfg = Config.fromfile(str(user))
    assert cfg.custom_imports.imports == ['queryvision_mm', 'queryvision_mm.safe_load']
    assert cfg.model.semi_train_cfg.unsup_weight == 2.0 and cfg.model.semi_train_cfg.cls_pseudo_thr == 0.4
    assert cfg.train_dataloader.dataset.datasets[0].ann_file.endswith('1@10.json')
    model = MODELS.build(cfg.model)
    assert model.student.num_queries == 300


def test_unknown_semi_train_cfg_key_is_an_error():
    cfg = shrink_semi_detr_cfg(load('coco_10pct'))
    cfg.model.semi_train_cfg['unsup_wieght'] = 2.0
    with pytest.raises(KeyError, match='unsup_wieght'):
        MODELS.build(cfg.model)
    cfg.model.semi_train_cfg.pop('unsup_wieght')
    cfg.model.semi_train_cfg['switch_iter'] = 10
    with pytest.raises(KeyError, match='QVStageSwitchHook'):
        MODELS.build(cfg.model)
