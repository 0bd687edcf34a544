# Semi-DETR demo on the embedded synthetic shapes data (tools/misc/make_demo_data.py): the same model,
# pipelines, hooks and losses as coco_10pct.py, shrunk to run on 2 CPU cores in minutes:
# the real ImageNet-pretrained EfficientNet-Lite0 backbone (offline weights package, README "Shared building
# blocks"; BN frozen, stem + stride-2/4 stages frozen, lr x 0.1 as the paper), 2 encoder + 2 decoder layers,
# 100 queries, ~144 px images, 40 labeled / 160 unlabeled images (20 %), 2:3 batches of 5, lr 2e-4, EMA 0.98
# (short run), unsupervised loss only once the teacher has pseudo-labels, one-to-one from the middle of the
# schedule. Why each demo value (issue 15): README "Semi-DETR", "Configs".
_base_ = '../_base_/semi_detr_dino-4scale_r50_coco.py'

max_iters = 250
switch_iter = 125
batch_size = 5
source_ratio = [2, 3]  # labeled : unlabeled per batch (paper 1:4); more labeled images -> confident teacher sooner
lr = 2e-4  # transformer lr (paper 1e-4 at batch 40 for 120k iters); backbone x 0.1 below
ema_momentum = 0.02  # student weight in the EMA (paper 0.001 for 120k iters): the teacher lags ~50 iterations
lr_drop_iter = 200  # lr x 0.1 from here (the short schedule's end; see param_scheduler)
data_root = 'data/demo_shapes/'
metainfo = dict(classes=('circle', 'square', 'triangle'))
num_classes = 3
scales = [(224, s) for s in (128, 144, 160)]
test_scale = (224, 144)

detector = _base_.detector
detector.num_queries = 100
# ImageNet-1k EfficientNet-Lite0 (queryvision_mm/models/backbones/efficientnet_lite.py): C3-C5 = 40/112/320
# channels at strides 8/16/32; BatchNorm in eval mode (batches of 5 give poor statistics), stem + the two stride-2/4
# block stages frozen (less backward work); input normalisation of the official Lite release, (x - 127) / 128 on RGB.
detector.backbone = dict(
    _delete_=True, type='QVEfficientNetLite', variant='lite0', out_indices=(2, 3, 4), frozen_stages=2, norm_eval=True,
    init_cfg=dict(type='Pretrained', checkpoint='efficientnet-lite://lite0'))
detector.neck.in_channels = [40, 112, 320]
detector.data_preprocessor = dict(
    type='DetDataPreprocessor', mean=[127.0] * 3, std=[128.0] * 3, bgr_to_rgb=True, pad_size_divisor=1)
detector.encoder.num_layers = 2
detector.decoder.num_layers = 2
detector.bbox_head.num_classes = num_classes
detector.dn_cfg.group_cfg = dict(dynamic=True, num_groups=None, num_dn_queries=20)
detector.bbox_head.nms_cfg = dict(score_thr=0.01, iou_threshold=0.6, max_per_img=100)
detector.test_cfg = dict(max_per_img=100)

# Burn-in for the short schedule: a batch whose teacher gives no pseudo-label >= 0.4 trains no unsupervised detection
# loss (mmdet SemiBaseDetector's convention) instead of all-background targets x unsup_weight (official), which at
# demo scale pushed every query on the unlabeled images to background and kept the teacher below 0.4 for the whole
# run (issue 15). As soon as a batch has pseudo-labels, the official losses apply unchanged.
model = dict(detector=detector, data_preprocessor=dict(data_preprocessor=detector.data_preprocessor),
             semi_train_cfg=dict(train_empty_pseudo=False))

# the base's pipelines with small scales (RandomChoiceResize is the resize step of each)
sup_pipeline = _base_.sup_pipeline
weak_pipeline = _base_.weak_pipeline
strong_pipeline = _base_.strong_pipeline
for _pipe, _idx in ((sup_pipeline, 2), (weak_pipeline, 0), (strong_pipeline, 0)):
    assert _pipe[_idx]['type'] == 'RandomChoiceResize'
    _pipe[_idx]['scales'] = scales
del _pipe, _idx
unsup_pipeline = [
    _base_.load_train_image,
    dict(type='LoadEmptyAnnotations'),
    dict(type='MultiBranch', branch_field=_base_.branch_field, unsup_teacher=weak_pipeline,
         unsup_student=strong_pipeline),
]
test_pipeline = [
    dict(type='QVLoadImageFromFile', skip_unreadable=False),
    dict(type='Resize', scale=test_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
labeled_dataset = dict(
    type='CocoDataset', data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_labeled.json',
    data_prefix=dict(img='images/'), filter_cfg=dict(filter_empty_gt=True), pipeline=sup_pipeline)
unlabeled_dataset = dict(
    type='CocoDataset', data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_unlabeled.json',
    data_prefix=dict(img='images/'), filter_cfg=dict(filter_empty_gt=False), pipeline=unsup_pipeline)
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='GroupMultiSourceSampler', batch_size=batch_size, source_ratio=source_ratio),
    dataset=dict(type='ConcatDataset', datasets=[labeled_dataset, unlabeled_dataset]))
val_dataloader = dict(
    batch_size=1,  # as mmdet's DETR configs: DETR outputs depend on batch padding
    num_workers=2,
    persistent_workers=True,
    dataset=dict(
        type='CocoDataset', data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_val.json',
        data_prefix=dict(img='images/'), test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
coco_metric = _base_.coco_metric
coco_metric.ann_file = data_root + 'annotations/instances_val.json'
val_evaluator = [coco_metric, _base_.dup_metric]
test_evaluator = val_evaluator

# pretrained backbone: the base's lr_mult 0.1 (paper) stays
optim_wrapper = dict(optimizer=dict(lr=lr))
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
# lr x 0.1 for the last 50 iterations (demo only: the papers keep a constant lr over 120k iterations). On the default
# Sparse demo (seed 0) it lifts the student from 26.4 to 31.6 COCO AP at the same cost (docs/benchmarks.md "Demo run")
param_scheduler = [
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters, milestones=[lr_drop_iter], gamma=0.1)]
custom_hooks = [
    # the official ramp and buffer handling (BN statistics are frozen); a faster EMA for the short schedule
    dict(type='QVMeanTeacherHook', momentum=ema_momentum, interval=1, skip_buffer=True, ramp=True, warm_up=0),
    dict(type='QVStageSwitchHook', switch_iter=switch_iter),
    # teacher pseudo-labels beside student predictions on 2 unlabeled images every 50 iterations, to the visualizer's
    # backends (here WORK_DIR/<timestamp>/vis_data/vis_image/pseudo_labels_<iter>.png); ~0.6 s per call (README
    # "Visualization"). Off in the paper configs.
    dict(type='QVPseudoLabelVisHook', interval=50, max_images=2),
]
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1),
    logger=dict(type='LoggerHook', interval=10))
randomness = dict(seed=0)
