"""Sparse Semi-DETR: QRM, RPFM (group assigner + duplicate filter), the ablation flags and the paper configs."""
import copy
import math
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.structures import InstanceData

from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures.bbox import bbox2roi, bbox_overlaps

from conftest import REPO, shrink_semi_detr_cfg
from test_models.test_semi_detr import confident_teacher, multi_branch_batch

# supplement Table 8 (+ switch points): unsup weight, EMA momentum (mmengine convention = 1 - rate), iterations
TABLE8 = {
    'coco_1pct': dict(unsup=4.0, momentum=0.004, iters=120000, switch=60000, classes=80, ann='1@1.json'),
    'coco_5pct': dict(unsup=4.0, momentum=0.004, iters=120000, switch=60000, classes=80, ann='1@5.json'),
    'coco_10pct': dict(unsup=4.0, momentum=0.004, iters=120000, switch=60000, classes=80, ann='1@10.json'),
    'coco_full': dict(unsup=2.0, momentum=0.001, iters=240000, switch=180000, classes=80,
                      ann='instances_train2017.json'),
    'voc': dict(unsup=4.0, momentum=0.001, iters=60000, switch=40000, classes=20, ann='voc07_trainval.json'),
}


def load(name):
    return Config.fromfile(osp.join(REPO, 'configs', 'sparse_semi_detr', f'{name}.py'))


@pytest.mark.parametrize('name', sorted(TABLE8))
def test_paper_configs_have_table8_values(name):
    cfg, exp = load(name), TABLE8[name]
    m = cfg.model
    assert m.type == 'QVSparseSemiDETR'
    assert m.semi_train_cfg.unsup_weight == exp['unsup'] and m.semi_train_cfg.cls_pseudo_thr == 0.4
    assert cfg.train_cfg.max_iters == exp['iters']
    hooks = {h['type']: h for h in cfg.custom_hooks}
    assert hooks['QVStageSwitchHook']['switch_iter'] == exp['switch']
    assert hooks['QVMeanTeacherHook']['momentum'] == pytest.approx(exp['momentum'])
    assert cfg.optim_wrapper.optimizer.lr == 1e-4, 'Semi-DETR\'s lr (issue 13 item 5); Table 8\'s 1e-3 is an override'
    assert [s['type'] for s in cfg.param_scheduler] == ['ConstantLR'], 'Table 8: no LR decay'
    assert m.detector.bbox_head.num_classes == exp['classes'] and m.detector.num_queries == 900
    assert cfg.train_dataloader.dataset.datasets[0].ann_file.endswith(exp['ann']), 'inherits the Semi-DETR data'
    assert m.rpfm_cfg == dict(num_groups=6, topk=4, t_hat_norm='box', o2o_pseudo_nms=True, dup_iou_thr=0.7,
                              dup_class_agnostic=True, apply_to_labeled=False)
    assert m.qrm_cfg.attention_on == 'high_res' and m.qrm_cfg.similarity and not m.qrm_cfg.with_mlp
    assert m.qrm_cfg.refine_view == 'weak' and m.qrm_cfg.refined_into == 'student' and m.qrm_cfg.label_in_query
    assert m.qrm_cfg.select_by == 'teacher_score'
    assert {e['type'] for e in cfg.val_evaluator} == {'CocoMetric', 'QVDuplicateRateMetric'}


def build(name='coco_10pct', **model_overrides):
    cfg = shrink_semi_detr_cfg(load(name))
    cfg.model.update(model_overrides)
    torch.manual_seed(0)
    m = MODELS.build(cfg.model)
    m.init_weights()
    m.train()
    return m


@pytest.fixture
def model():
    return build()


@pytest.mark.parametrize('qrm,rpfm', [(False, False), (True, False), (False, True), (True, True)])
def test_table5a_ablation_flags_change_the_module_graph(qrm, rpfm):
    """Table 5(a) = four overrides of one config; off means exactly Semi-DETR's piece."""
    overrides = {}
    if not qrm:
        overrides['qrm_cfg'] = None  # the one override: Semi-DETR's RoI extractor + projector come back
    if not rpfm:
        overrides['rpfm_cfg'] = None
    m = build(**overrides)
    names = {n.split('.')[0] for n, _ in m.named_modules() if n}
    assert ('qrm' in names) is qrm
    assert ('projector' in names) is (not qrm) and ('roi_extractor' in names) is (not qrm)
    if not qrm:
        semi = Config.fromfile(osp.join(REPO, 'configs/semi_detr/coco_10pct.py')).model.consistency_cfg
        assert m.projector.mlp[0].out_features == semi.projector.hidden_dims
        assert m.roi_extractor.featmap_strides == semi.roi_extractor.featmap_strides
        confident_teacher(m, 2.0)
        m.set_stage(True)
        batch = multi_branch_batch(m)
        losses = m.loss(batch['inputs'], copy.deepcopy(batch['data_samples']))
        assert losses['unsup_loss_consistency'] > 0, 'Semi-DETR consistency queries train'
    assert hasattr(m, 'rpfm_assigner') is rpfm
    if rpfm:
        assert type(m.rpfm_assigner).__name__ == 'QVGroupO2MAssigner'
        assert (m.rpfm_assigner.num_groups, m.rpfm_assigner.topk) == (6, 4)
    for det in (m.student, m.teacher):  # labeled images keep Semi-DETR's assigner
        assert type(det.bbox_head.o2m_assigner).__name__ == 'QVO2MAssigner'
        assert det.bbox_head.o2m_assigner.topk == 13
    m.set_stage(False)
    assert m._use_pseudo_nms(), 'Semi-DETR NMS(0.6) on pseudo-labels also after the switch (o2o_pseudo_nms)'
    if rpfm:
        m.rpfm_cfg.o2o_pseudo_nms = False
        assert not m._use_pseudo_nms(), 'o2o_pseudo_nms=False: NMS-free pseudo-labels after the switch'
    m.set_stage(True)
    assert m._use_pseudo_nms(), 'one-to-many stage keeps Semi-DETR NMS on pseudo-labels'


def test_qrm_options_change_the_module_graph():
    mods = lambda **kw: {n for n, _ in MODELS.build(dict(type='QVQueryRefinementModule', **kw)).named_children()}
    assert {'attn_high'} <= mods() and 'attn_low' not in mods()
    assert 'attn_high' not in mods(attention_on='low_res') and 'attn_low' in mods(attention_on='low_res')
    assert {'attn_high', 'attn_low'} <= mods(attention_on='both')
    assert not {'attn_high', 'attn_low'} & mods(attention_on='none')
    mlp = MODELS.build(dict(type='QVQueryRefinementModule', with_mlp=True)).out_proj
    assert isinstance(mlp, torch.nn.Sequential) and any(isinstance(x, torch.nn.BatchNorm1d) for x in mlp)
    with pytest.raises(ValueError, match='attention_on'):
        MODELS.build(dict(type='QVQueryRefinementModule', attention_on='high'))
    with pytest.raises(ValueError, match='low_res_level'):
        MODELS.build(dict(type='QVQueryRefinementModule', low_res_level=4))
    with pytest.raises(ValueError, match='refine_view'):
        build(qrm_cfg=dict(type='QVQueryRefinementModule', refine_view='teacher'))
    with pytest.raises(KeyError, match='num_group'):
        build(rpfm_cfg=dict(num_group=6))


def test_qrm_shapes_and_gradients():
    qrm = MODELS.build(dict(type='QVQueryRefinementModule', in_channels=16, out_dims=32, reduced_channels=8,
                            num_heads=2))
    feats = [torch.randn(2, 16, 64 // s, 96 // s, requires_grad=True) for s in (8, 16, 32, 64)]
    rois = bbox2roi([torch.tensor([[4., 4., 40., 30.], [0., 0., 95., 63.], [50., 10., 60., 20.]]),
                     torch.tensor([[10., 10., 20., 50.]])])
    content, score = qrm(feats, rois)
    assert content.shape == (4, 32) and score.shape == (4, )
    assert not score.requires_grad and (score <= 1 + 1e-6).all() and (score >= -1 - 1e-6).all()
    content.sum().backward()
    assert feats[0].grad.abs().sum() > 0 and feats[2].grad.abs().sum() > 0, 'both resolutions feed the query'
    assert feats[1].grad is None or feats[1].grad.abs().sum() == 0, 'only the configured levels are used'
    # without similarity: every box kept, score 0
    plain = MODELS.build(dict(type='QVQueryRefinementModule', in_channels=16, out_dims=32, reduced_channels=8,
                              num_heads=2, similarity=False))
    _, s0 = plain([f.detach() for f in feats], rois)
    assert torch.equal(s0, torch.zeros(4)) and torch.equal(plain.select(s0), torch.arange(4))


def test_similarity_selection_hand_computed():
    attended = torch.tensor([[[1., 0.], [0., 1.]]])
    other = torch.tensor([[[0., 2.], [3., 0.1]]])
    selected, score = MODELS.get('QVQueryRefinementModule').select_similar(attended, other)
    # cos(a0,o0)=0, cos(a0,o1)=3/sqrt(9.01); cos(a1,o0)=1, cos(a1,o1)=0.1/sqrt(9.01)
    assert torch.equal(selected, torch.tensor([[[3., 0.1], [0., 2.]]]))
    torch.testing.assert_close(score, torch.tensor([(3 / math.sqrt(9.01) + 1) / 2]))

    qrm = MODELS.build(dict(type='QVQueryRefinementModule', keep_ratio=0.5, select_by='similarity'))
    # ceil(0.5 * 5) = 3 best; the tie at 0.9 keeps both; returned in box order
    assert qrm.select(torch.tensor([0.1, 0.9, 0.5, 0.9, 0.2])).tolist() == [1, 2, 3]
    assert qrm.select(torch.tensor([0.3])).tolist() == [0], 'a single box is always kept'
    assert qrm.select(torch.zeros(0)).numel() == 0
    qrm.keep_ratio = None
    assert qrm.select(torch.tensor([0.1, 0.9])).tolist() == [0, 1]


def test_qrm_attention_branch_roles():
    """attention_on='low_res' attends the low-resolution tokens and compares them against the high-res ones."""
    qrm = MODELS.build(dict(type='QVQueryRefinementModule', in_channels=8, out_dims=8, reduced_channels=4,
                            num_heads=1, attention_on='low_res'))
    feats = [torch.randn(1, 8, 64 // s, 64 // s) for s in (8, 16, 32, 64)]
    rois = bbox2roi([torch.tensor([[0., 0., 63., 63.]])])
    seen = {}
    orig = qrm.select_similar
    qrm.select_similar = lambda a, o: seen.update(a=a, o=o) or orig(a, o)
    qrm(feats, rois)
    x_high = qrm.reduce_high(qrm.roi_high(feats[0], rois).flatten(2).transpose(1, 2))
    x_low = qrm.reduce_low(qrm.roi_low(feats[2], rois).flatten(2).transpose(1, 2))
    torch.testing.assert_close(seen['o'], x_high)
    torch.testing.assert_close(seen['a'], x_low + qrm.attn_low(x_low, x_low, x_low)[0])


def test_refined_queries_and_denoising_never_see_each_other(model):
    """Refined slots' hidden states do not depend on the denoising queries (random per call) and matching/DN
    outputs do not depend on the refined queries."""
    det = model.student
    batch = multi_branch_batch(model, n_sup=2)
    inputs, samples = batch['inputs']['sup'], batch['data_samples']['sup']
    feats = det.extract_feat(inputs)
    boxes = [s.gt_instances.bboxes for s in samples]
    content, _ = model.qrm(feats, bbox2roi(boxes))
    ref = torch.logit(torch.rand(2, 3, 4).clamp(0.05, 0.95))
    extra = dict(query=content.view(2, 3, -1).repeat(1, 2, 1), reference_unact=ref.repeat(1, 2, 1), num_groups=2)
    outs = []
    for seed in (1, 2):
        torch.manual_seed(seed)  # different denoising noise
        outs.append(det.forward_transformer(feats, samples, extra_queries=extra))
    assert outs[0]['dn_meta']['num_denoising_queries'] > 0
    torch.testing.assert_close(outs[0]['extra_hidden_states'], outs[1]['extra_hidden_states'])
    num_dn = outs[0]['dn_meta']['num_denoising_queries']
    assert not torch.allclose(outs[0]['hidden_states'][:, :, :num_dn], outs[1]['hidden_states'][:, :, :num_dn])
    without_dn = det.forward_transformer(feats, samples, extra_queries=extra, with_dn=False)
    torch.testing.assert_close(without_dn['extra_hidden_states'], outs[0]['extra_hidden_states'])
    torch.manual_seed(1)
    plain = det.forward_transformer(feats, samples)
    torch.testing.assert_close(plain['hidden_states'], outs[0]['hidden_states'], rtol=1e-5, atol=1e-5)


def test_fewer_refined_queries_than_semi_detr_consistency_queries():
    semi_cfg = shrink_semi_detr_cfg(Config.fromfile(osp.join(REPO, 'configs/semi_detr/coco_10pct.py')))
    torch.manual_seed(0)
    semi = MODELS.build(semi_cfg.model)
    semi.init_weights()
    sparse = build()
    counts = {}
    for name, m in (('semi', semi), ('sparse', sparse)):
        confident_teacher(m, 2.0)
        m.semi_train_cfg.use_gmm_mining = False
        m.set_stage(True)
        batch = multi_branch_batch(m)
        losses = m.loss(batch['inputs'], copy.deepcopy(batch['data_samples']))
        counts[name] = (float(losses['unsup_num_extra_queries']), float(losses['unsup_num_pseudo']))
    assert counts['semi'][1] == counts['sparse'][1] > 0, 'same pseudo-labels'
    n = counts['semi'][0] / 5  # slots per group = max boxes per image
    assert counts['sparse'][0] == 5 * math.ceil(0.5 * n) < counts['semi'][0]


def test_group_assigner_keeps_exactly_topk_per_group():
    assigner = TASK_UTILS.build(dict(type='QVGroupO2MAssigner', num_groups=3, topk=2, t_hat_norm='group'))
    gt = InstanceData(bboxes=torch.tensor([[0., 0., 40., 40.], [200., 200., 240., 240.]]),
                      labels=torch.tensor([0, 1]))
    # 10 predictions around each ground truth, overlap decreasing with the shift; one unrelated far away
    shifts = torch.arange(10, dtype=torch.float32)
    boxes = torch.cat([torch.stack([shifts, shifts, 40 + shifts, 40 + shifts], 1),
                       torch.stack([200 + shifts, 200 - shifts, 240 + shifts, 240 - shifts], 1),
                       torch.tensor([[400., 400., 420., 420.]])])
    scores = torch.full((21, 2), 0.5)
    res = assigner.assign(InstanceData(bboxes=boxes, scores=scores), gt)
    groups = res.get_extra_property('assign_groups')
    for j in range(2):
        for g in range(3):
            members = torch.nonzero((res.gt_inds == j + 1) & (groups == g)).flatten()
            # group g takes ranks 2g, 2g+1 (overlap decreases with the index)
            assert members.tolist() == [10 * j + 2 * g, 10 * j + 2 * g + 1]
            t_hat = res.get_extra_property('assign_metrics')[members]
            ious = bbox_overlaps(boxes[members], gt.bboxes[j:j + 1]).flatten()
            torch.testing.assert_close(t_hat.max(), ious.max(), atol=1e-5, rtol=1e-5)  # normalised per group
    assert (res.gt_inds > 0).sum() == 2 * 3 * 2 and res.gt_inds[20] == 0, 'no more than m*k positives'
    assert ((groups >= 0) == (res.gt_inds > 0)).all()
    assert res.labels[:10].eq(0).sum() == 6 and res.labels[10:20].eq(1).sum() == 6
    # no ground truth / no prediction
    empty = assigner.assign(InstanceData(bboxes=boxes, scores=scores), gt[:0])
    assert (empty.gt_inds == 0).all() and (empty.get_extra_property('assign_groups') == -1).all()
    none = assigner.assign(InstanceData(bboxes=boxes[:0], scores=scores[:0]), gt)
    assert none.gt_inds.numel() == 0


def test_duplicate_filter_and_mask_hand_computed():
    from queryvision_mm.models.task_modules.pseudo_label_filter import duplicate_mask, filter_duplicate_pseudo_labels
    boxes = torch.tensor([[0., 0., 10., 10.], [0., 0., 10., 9.], [0., 0., 10., 10.], [0., 0., 10., 6.],
                          [50., 50., 60., 60.], [0., 0., 10., 9.5]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.2])
    labels = torch.tensor([0, 0, 1, 0, 0, 0])
    # IoU(0,1)=0.9 same class -> 1 dup; 2 other class; IoU(0,3)=0.6 kept; 4 far; 5 below threshold untouched
    inst = InstanceData(bboxes=boxes, scores=scores, labels=labels)
    out = filter_duplicate_pseudo_labels(inst, score_thr=0.4, iou_thr=0.7)
    assert out.scores.tolist() == pytest.approx([0.9, 0.7, 0.6, 0.5, 0.2])
    again = filter_duplicate_pseudo_labels(out, score_thr=0.4, iou_thr=0.7)
    assert torch.equal(again.bboxes, out.bboxes), 'idempotent'
    assert duplicate_mask(boxes, scores, labels, 0.7).tolist() == [False, True, False, False, False, True]
    # pairwise, not greedy: box 2 overlaps box 1 (a duplicate itself) and still counts
    chain = torch.tensor([[0., 0., 10., 10.], [0., 0., 10., 8.], [0., 0., 10., 6.]])
    assert duplicate_mask(chain, torch.tensor([.9, .8, .7]), torch.zeros(3, dtype=torch.long), 0.7).tolist() == \
        [False, True, True]
    assert len(filter_duplicate_pseudo_labels(inst[:0], 0.4, 0.7)) == 0


def test_duplicate_rate_metric_hand_computed():
    from queryvision_mm.evaluation.metrics import QVDuplicateRateMetric
    metric = QVDuplicateRateMetric(score_thr=0.3, iou_thr=0.7)
    b = torch.tensor([[0., 0., 10., 10.], [0., 0., 10., 9.], [0., 0., 10., 9.], [20., 20., 30., 30.]])
    samples = [
        dict(pred_instances=dict(bboxes=b, scores=torch.tensor([.9, .8, .2, .5]), labels=torch.tensor([0, 0, 0, 0]))),
        dict(pred_instances=dict(bboxes=b[:2], scores=torch.tensor([.9, .8]), labels=torch.tensor([0, 1]))),
        dict(pred_instances=dict(bboxes=b[:0], scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.long))),
    ]
    metric.process({}, samples)
    res = metric.evaluate(3)
    # image 0: 3 predictions >= 0.3, one duplicate; image 1: 2 predictions, different classes; image 2: none
    assert res['dup/rate'] == pytest.approx(1 / 5)
    assert res['dup/per_img'] == pytest.approx(1 / 3)
    assert res['dup/preds_per_img'] == pytest.approx(5 / 3)
    assert res['dup/imgs_with_dup'] == pytest.approx(1 / 3)


@pytest.mark.parametrize('view', ['weak', 'strong'])
def test_empty_pseudo_labels_both_stages(view):
    m = build(qrm_cfg=dict(load('coco_10pct').model.qrm_cfg, refine_view=view))
    confident_teacher(m, -30.0)
    batch = multi_branch_batch(m)
    for stage in (True, False):
        m.set_stage(stage)
        losses = m.loss(batch['inputs'], copy.deepcopy(batch['data_samples']))
        assert losses['unsup_num_pseudo'] == 0
        assert all(float(v) == 0 for k, v in losses.items() if 'consistency' in k), 'dummy slots have weight 0'
        total, _ = m.parse_losses(losses)
        assert torch.isfinite(total)
        total.backward()


def test_training_losses_both_stages_gradients_and_pseudo_labels(model):
    confident_teacher(model, 2.0)
    batch = multi_branch_batch(model)
    model.set_stage(True)
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    losses = model.loss(batch['inputs'], copy.deepcopy(batch['data_samples']))
    assert losses['unsup_loss_consistency'] > 0 and losses['unsup_num_extra_queries'] > 0
    total, _ = model.parse_losses(losses)
    total.backward()
    assert all(p.grad is not None for p in model.qrm.parameters()), 'every QRM parameter is trained'
    assert all(p.grad is None for p in model.teacher.parameters())
    model.zero_grad()
    model.set_stage(False)
    losses = model.loss(batch['inputs'], copy.deepcopy(batch['data_samples']))
    assert losses['unsup_num_extra_queries'] == 0 and losses['unsup_dn_loss_cls'] > 0
    total, _ = model.parse_losses(losses)
    total.backward()
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    # one-to-one stage pseudo-labels: NMS-free, but no same-class pair above dup_iou_thr among the confident
    model.semi_train_cfg.adaptive_pseudo_thr = False
    pl = model.teacher_pseudo_labels(batch['inputs']['unsup_teacher'],
                                     copy.deepcopy(batch['data_samples']['unsup_teacher']))
    for res in pl:
        conf = res[res.scores >= 0.4]
        assert len(conf) > 0
        for c in conf.labels.unique():
            boxes = conf.bboxes[conf.labels == c]
            iou = bbox_overlaps(boxes, boxes)
            iou.fill_diagonal_(0)
            assert (iou <= 0.7 + 1e-6).all()


def test_group_assigner_used_for_pseudo_labels_only(model):
    """In the one-to-many stage the pseudo-label branch assigns with the RPFM groups, the labeled branch with
    Semi-DETR's top-13; apply_to_labeled puts the groups on both."""
    confident_teacher(model, 2.0)
    model.set_stage(True)
    calls = []
    for name, assigner in (('labeled', model.student.bbox_head.o2m_assigner), ('pseudo', model.rpfm_assigner)):
        orig = assigner.assign
        assigner.assign = (lambda o, n: lambda *a, **k: calls.append(n) or o(*a, **k))(orig, name)
    batch = multi_branch_batch(model)
    model.loss(batch['inputs'], copy.deepcopy(batch['data_samples']))
    assert 'labeled' in calls and 'pseudo' in calls
    first_pseudo = calls.index('pseudo')
    assert all(c == 'labeled' for c in calls[:first_pseudo]) and all(c == 'pseudo' for c in calls[first_pseudo:])
    assert type(model.student.bbox_head.o2m_assigner).__name__ == 'QVO2MAssigner', 'restored after the loss'
    both = build(rpfm_cfg=dict(load('coco_10pct').model.rpfm_cfg, apply_to_labeled=True))
    assert type(both.student.bbox_head.o2m_assigner).__name__ == 'QVGroupO2MAssigner'
