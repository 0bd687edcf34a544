# Semi-DETR (CVPR 2023) on COCO-Partial, mmdet 3.3 edition.
# Every value follows the official code (JCZ404/Semi-DETR, mmdet 2.x); a tag names the part of it a value comes from:
#   [official detector], [official wrapper/EMA], [official pseudo-labels], [official matching], [official consistency],
#   [official pipelines], [official schedule] (sampler/optimiser/schedule). README "Semi-DETR" (Configs, Flags,
#   Deviations) documents them. The DINO-R50 detector itself comes from mmdet's own config.
_base_ = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'

# queryvision_mm: the detection plugin (mmdet registries); queryvision_mm.safe_load: applies the safe
# (weights_only) checkpoint-loading shim, also for mmdet's own tools/train.py (queryvision_mm/safe_load.py)
custom_imports = dict(imports=['queryvision_mm', 'queryvision_mm.safe_load'], allow_failed_imports=False)

max_iters = 120000  # [official schedule] COCO-Partial
switch_iter = 60000  # [official detector] warm_up_step: one-to-many until 60k, then one-to-one
val_interval = 4000  # [official wrapper/EMA] SubModulesDistEvalHook(interval=4000)
batch_size = 5  # per GPU, 8 GPUs -> 40 ([official schedule])
source_ratio = [1, 4]  # labeled : unlabeled

# ---------------------------------------------------------------- detector (student = teacher architecture)
detector = _base_.model
detector.type = 'QVSemiDINO'
# [official detector] input projections are Conv2d with bias + GroupNorm (GN does not cancel a per-channel bias);
# mmdet's DINO ChannelMapper drops it (bias='auto' with a norm). Official checkpoints load with it
detector.neck.bias = True
detector.dn_cfg.box_noise_scale = 0.4  # [official detector] dn_box_noise_scale (mmdet default 1.0)
detector.bbox_head.type = 'QVSemiDETRHead'
detector.bbox_head.sync_cls_avg_factor = False  # [official matching] official O2O focal loss is not synced across GPUs
detector.bbox_head.loss_cls = dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0)
detector.bbox_head.l1_double_count = True  # [official detector] effective L1 weight 10 (loss_bbox_xy + loss_bbox_hw)
detector.bbox_head.o2m_assigner = dict(type='QVO2MAssigner', topk=13, alpha=1.0, beta=6.0)  # [official matching]
detector.bbox_head.loss_cls_o2m = dict(type='QualityFocalLoss', use_sigmoid=True, beta=2.0, loss_weight=2.0)
detector.bbox_head.nms_cfg = dict(score_thr=0.01, iou_threshold=0.6, max_per_img=300)  # [official pseudo-labels]
detector.bbox_head.enc_class_agnostic = True  # official head: encoder proposals trained as objectness (label 0)

model = dict(
    _delete_=True,
    type='QVSemiDETR',
    detector=detector,
    data_preprocessor=dict(type='MultiBranchDataPreprocessor', data_preprocessor=detector.data_preprocessor),
    semi_train_cfg=dict(
        freeze_teacher=True,
        sup_weight=1.0,
        unsup_weight=4.0,  # [official wrapper/EMA] Partial/VOC (Full: 2.0)
        cls_pseudo_thr=0.4,  # [official pseudo-labels] set A
        min_pseudo_bbox_wh=(1e-2, 1e-2),
        pseudo_nms=True,  # [official pseudo-labels] NMS on pseudo-labels in both stages
        adaptive_pseudo_thr=True,  # [official pseudo-labels] mean + std
        use_gmm_mining=True,  # [official pseudo-labels] set B (consistency only)
        consistency_in_o2o=False,  # [official consistency] loss weights zeroed after the switch
        dn_on_pseudo_in_o2m=False,  # [official matching] pseudo DN loss zeroed in the O2M stage
        train_empty_pseudo=True),  # official: no pseudo-label -> all-background targets, still x unsup_weight
    semi_test_cfg=dict(predict_on='student', nms='auto'),  # [official wrapper/EMA] inference_on='student'
    consistency_cfg=dict(  # [official consistency]
        roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
            out_channels=256,
            featmap_strides=[8, 16, 32, 64]),
        projector=dict(type='QVConsistencyProjector', in_channels=256, roi_size=7, hidden_dims=1024, out_dims=256),
        num_groups=5,
        loss_weight=10.0))

# ---------------------------------------------------------------- data ([official pipelines])
dataset_type = 'CocoDataset'
data_root = 'data/coco/'
backend_args = None
labeled_ann = 'semi_anns/instances_train2017.1@10.json'
unlabeled_ann = 'semi_anns/instances_train2017.1@10-unlabeled.json'
train_img_prefix = 'train2017/'

scales = [(1333, s) for s in range(480, 801, 32)]  # 11 scales, keep ratio
branch_field = ['sup', 'unsup_teacher', 'unsup_student']
meta_keys = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip', 'flip_direction',
             'homography_matrix')
# Semi-DETR's OneOf of 9 colour ops; 'Identity' is ColorTransform at magnitude 1.0
color_space = [
    [dict(type='ColorTransform', min_mag=1.0, max_mag=1.0)],
    [dict(type='AutoContrast')],
    [dict(type='Equalize')],
    [dict(type='Solarize')],
    [dict(type='Color')],
    [dict(type='Contrast')],
    [dict(type='Brightness')],
    [dict(type='Sharpness')],
    [dict(type='Posterize')],
]
# translate 0.1, rotate 30 deg, and shear x AND y (30 deg) as one option (RandAugment takes one
# transform per option, hence the Compose)
geometric = [
    [dict(type='TranslateX', max_mag=0.1)],
    [dict(type='TranslateY', max_mag=0.1)],
    [dict(type='Rotate', max_mag=30.0)],
    [dict(type='Compose', transforms=[dict(type='ShearX', max_mag=30.0), dict(type='ShearY', max_mag=30.0)])],
]

# QVLoadImageFromFile: an unreadable image is skipped with a warning naming it, and the run stops only when more
# than max_skip_fraction of the loads were skipped (queryvision_mm/datasets/loading.py); in evaluation it is an error
load_train_image = dict(type='QVLoadImageFromFile', backend_args=backend_args, max_skip_fraction=0.001)
sup_pipeline = [
    load_train_image,
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomChoiceResize', scales=scales, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandAugment', aug_space=color_space, aug_num=1),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='MultiBranch', branch_field=branch_field, sup=dict(type='PackDetInputs', meta_keys=meta_keys)),
]
weak_pipeline = [
    dict(type='RandomChoiceResize', scales=scales, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs', meta_keys=meta_keys),
]
strong_pipeline = [
    dict(type='RandomChoiceResize', scales=scales, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomOrder',
         transforms=[
             dict(type='RandAugment', aug_space=color_space, aug_num=1),
             dict(type='RandAugment', aug_space=geometric, aug_num=1),
         ]),
    dict(type='RandomErasing', n_patches=(1, 5), ratio=(0, 0.2), squared=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='PackDetInputs', meta_keys=meta_keys),
]
unsup_pipeline = [
    load_train_image,
    dict(type='LoadEmptyAnnotations'),
    dict(type='MultiBranch', branch_field=branch_field, unsup_teacher=weak_pipeline, unsup_student=strong_pipeline),
]

labeled_dataset = dict(
    type=dataset_type,
    data_root=data_root,
    ann_file=labeled_ann,
    data_prefix=dict(img=train_img_prefix),
    filter_cfg=dict(filter_empty_gt=True, min_size=32),
    pipeline=sup_pipeline,
    backend_args=backend_args)
unlabeled_dataset = dict(
    type=dataset_type,
    data_root=data_root,
    ann_file=unlabeled_ann,
    data_prefix=dict(img=train_img_prefix),
    filter_cfg=dict(filter_empty_gt=False),
    pipeline=unsup_pipeline,
    backend_args=backend_args)

train_dataloader = dict(
    _delete_=True,
    batch_size=batch_size,
    num_workers=5,
    persistent_workers=True,
    sampler=dict(type='GroupMultiSourceSampler', batch_size=batch_size, source_ratio=source_ratio),
    dataset=dict(type='ConcatDataset', datasets=[labeled_dataset, unlabeled_dataset]))

# ---------------------------------------------------------------- evaluation
# mmdet's test pipeline with a loader that names an unreadable image (never a silently smaller test set)
test_pipeline = _base_.test_pipeline
assert test_pipeline[0]['type'] == 'LoadImageFromFile'
test_pipeline[0] = dict(type='QVLoadImageFromFile', skip_unreadable=False, backend_args=backend_args)
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
# COCO AP (with AP_small/medium/large) plus the duplicate rate: same-class predictions with IoU > 0.7, both
# scored >= 0.3, per image (checks the "fewer duplicates" claim of NMS-free training). Child configs change the
# annotation file with ``coco_metric.ann_file = ...; val_evaluator = [coco_metric, dup_metric]``.
coco_metric = dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val2017.json', metric='bbox',
                   format_only=False, backend_args=backend_args)
dup_metric = dict(type='QVDuplicateRateMetric', score_thr=0.3, iou_thr=0.7)
val_evaluator = [coco_metric, dup_metric]
test_evaluator = val_evaluator

# ---------------------------------------------------------------- schedule ([official schedule])
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=val_interval)
val_cfg = dict(_delete_=True, type='TeacherStudentValLoop')
test_cfg = dict(_delete_=True, type='TestLoop')
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}))
# Partial/VOC: mmcv's step policy at [120k, 160k] iterations never fires within 120k -> constant LR
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=max_iters)]
auto_scale_lr = dict(enable=False, base_batch_size=40)

custom_hooks = [
    dict(type='QVMeanTeacherHook', momentum=0.001, interval=1, skip_buffer=True, ramp=True, warm_up=0),  # [official]
    dict(type='QVStageSwitchHook', switch_iter=switch_iter),
]
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=val_interval, max_keep_ckpts=3),
    logger=dict(type='LoggerHook', interval=50))
log_processor = dict(by_epoch=False)
# the projector is unused after the switch (consistency off) -> DDP must tolerate unused parameters
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
