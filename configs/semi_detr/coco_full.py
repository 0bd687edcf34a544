# Semi-DETR, COCO-Full: train2017 labeled + unlabeled2017, 8 GPUs x 8 images (1:1), 240k iterations,
# one-to-one from 120k, unsup weight 2.0, AdamW 1e-4 with x0.1 steps at 120k and 160k
# (official wrapper and schedule; README "Semi-DETR").
# unlabeled2017 json: image_info_unlabeled2017.json with train2017 categories (README "Datasets").
_base_ = '../_base_/semi_detr_dino-4scale_r50_coco.py'

max_iters = 240000
switch_iter = 120000
batch_size = 8

model = dict(semi_train_cfg=dict(unsup_weight=2.0))
labeled_dataset = _base_.labeled_dataset
labeled_dataset.ann_file = 'annotations/instances_train2017.json'
unlabeled_dataset = _base_.unlabeled_dataset
unlabeled_dataset.ann_file = 'annotations/instances_unlabeled2017.json'
unlabeled_dataset.data_prefix = dict(img='unlabeled2017/')
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=8,
    sampler=dict(batch_size=batch_size, source_ratio=[1, 1]),
    dataset=dict(datasets=[labeled_dataset, unlabeled_dataset]))
train_cfg = dict(max_iters=max_iters)
param_scheduler = [dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters, milestones=[120000, 160000],
                        gamma=0.1)]
custom_hooks = [
    dict(type='QVMeanTeacherHook', momentum=0.001, interval=1, skip_buffer=True, ramp=True, warm_up=0),
    dict(type='QVStageSwitchHook', switch_iter=switch_iter),
]
auto_scale_lr = dict(base_batch_size=64)
