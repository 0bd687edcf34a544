# Semi-DETR, Pascal VOC: VOC07 trainval labeled, VOC12 trainval unlabeled, VOC07 test; COCO-format jsons
# (README "Datasets": tools/dataset_converters/pascal_voc.py from mmdet). 8 GPUs x 5 (1:4), 80k iterations,
# one-to-one from 40k, unsup weight 4, AdamW 1e-4 constant (official detector and schedule). Metric: COCO AP and AP50.
_base_ = '../_base_/semi_detr_dino-4scale_r50_coco.py'

max_iters = 80000
switch_iter = 40000
data_root = 'data/VOCdevkit/'
voc_classes = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
               'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train',
               'tvmonitor')
metainfo = dict(classes=voc_classes)

model = dict(
    detector=dict(bbox_head=dict(num_classes=20)))
labeled_dataset = _base_.labeled_dataset
labeled_dataset.update(
    data_root=data_root, metainfo=metainfo, ann_file='annotations/voc07_trainval.json', data_prefix=dict(img=''))
unlabeled_dataset = _base_.unlabeled_dataset
unlabeled_dataset.update(
    data_root=data_root, metainfo=metainfo, ann_file='annotations/voc12_trainval.json', data_prefix=dict(img=''))
train_dataloader = dict(dataset=dict(datasets=[labeled_dataset, unlabeled_dataset]))
val_dataloader = dict(
    dataset=dict(
        data_root=data_root, metainfo=metainfo, ann_file='annotations/voc07_test.json', data_prefix=dict(img='')))
test_dataloader = val_dataloader
coco_metric = _base_.coco_metric
coco_metric.ann_file = data_root + 'annotations/voc07_test.json'
val_evaluator = [coco_metric, _base_.dup_metric]
test_evaluator = val_evaluator
train_cfg = dict(max_iters=max_iters)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=max_iters)]
custom_hooks = [
    dict(type='QVMeanTeacherHook', momentum=0.001, interval=1, skip_buffer=True, ramp=True, warm_up=0),
    dict(type='QVStageSwitchHook', switch_iter=switch_iter),
]
