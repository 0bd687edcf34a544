# CQ-DINO demo on the embedded mini V3Det-format set (python tools/misc/make_demo_data.py --kind v3det): the V3Det
# configuration (tree aggregation from the official tree-JSON schema, parent-masked ASL, V3DetDataset with its class
# file, CocoMetric at 300 detections + selector recall) shrunk to train on 2 CPU cores in minutes: 14 categories
# (two named "star" once cleaned, a multi-parent DAG) whose colours say nothing about the category (the selector and
# the detector must work from shape), K = 6 selected per image, the ImageNet-pretrained EfficientNet-Lite0 (offline
# weights package, README "Shared building blocks"; BatchNorm frozen, stem + stride-2/4 stages frozen, lr x 0.1),
# 2 encoder + 2 decoder layers, 100 queries, ~160 px images. Category queries start random (no CLIP weights
# offline; see tools/misc/make_category_embeddings.py to initialise from CLIP text embeddings).
_base_ = '../_base_/cq_dino_r50_v3det.py'

data_root = 'data/demo_v3det/'
label_file = 'annotations/category_name_demo_v3det.txt'
tree_file = data_root + 'annotations/demo_v3det_category_tree.json'
num_classes = 14
topk = 6
max_epochs = 8  # 6 before the pretrained backbone; 8 brings the scores above the picture's 0.3 more often
batch_size = 4

# stage 2 starts from the selector pre-trained by demo_v3det_stage1.py (as the real configs; tools/run_demo.sh runs both
# and passes the stage-1 run's last checkpoint); work dirs = the tools' defaults, explicit so that tools find the pair
work_dir = 'work_dirs/cq_dino_demo_v3det'
load_from = 'work_dirs/cq_dino_demo_v3det_stage1/epoch_8.pth'  # last checkpoint of cq_dino/demo_v3det_stage1.py

model = dict(
    num_queries=100,
    # ImageNet-1k EfficientNet-Lite0 (queryvision_mm/models/backbones/efficientnet_lite.py): C3-C5 = 40/112/320
    # channels at strides 8/16/32, the selector reads C5; input normalisation of the official Lite release,
    # (x - 127) / 128 on RGB
    data_preprocessor=dict(mean=[127.0] * 3, std=[128.0] * 3, bgr_to_rgb=True),
    backbone=dict(
        _delete_=True, type='QVEfficientNetLite', variant='lite0', out_indices=(2, 3, 4), frozen_stages=2,
        norm_eval=True, init_cfg=dict(type='Pretrained', checkpoint='efficientnet-lite://lite0')),
    neck=dict(in_channels=[40, 112, 320]),
    encoder=dict(num_layers=2, num_cp=0),  # no activation checkpointing at this size
    use_autocast=False,  # fp32 on any device (the real configs' fp16 backbone autocast is CUDA-only)
    decoder=dict(num_layers=2),
    dn_cfg=dict(group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=20)),
    language_model=dict(
        num_classes=num_classes, img_in_channels=320, embed_dims=256, kv_dims=128, num_layers=2, num_heads=4,
        ffn_dims=1024, dropout=0.0, topk=topk,
        relation=dict(tree_file=tree_file, num_classes=num_classes, max_count=num_classes),
        embed_file=None, class_names=data_root + label_file),
    hierarchy=dict(tree_file=tree_file),
    bbox_head=dict(contrastive_cfg=dict(max_text_len=topk)),
    test_cfg=dict(max_per_img=100))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoiceResize', scales=[(256, s) for s in (144, 160, 176)], keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='FixScaleResize', scale=(256, 160), keep_ratio=True, backend='pillow'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=batch_size, num_workers=2,
    dataset=dict(data_root=data_root, label_file=label_file, ann_file='annotations/demo_v3det_train.json',
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=2,  # as mmdet's DETR configs: DETR outputs depend on batch padding
    dataset=dict(data_root=data_root, label_file=label_file, ann_file='annotations/demo_v3det_val.json',
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
coco_metric = dict(_base_.coco_metric, ann_file=data_root + 'annotations/demo_v3det_val.json', use_mp_eval=False,
                   proposal_nums=(1, 10, 100))  # pycocotools' summary needs three; 100 = max_per_img here
val_evaluator = [coco_metric, _base_.recall_metric]
test_evaluator = val_evaluator

# pretrained backbone x 0.1 (as the SSOD demos); the selector starts random here (the real configs: from stage 1 and
# CLIP embeddings, x 0.01), so it gets the full learning rate
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={
    'absolute_pos_embed': dict(decay_mult=0.),
    'backbone': dict(lr_mult=0.1, decay_mult=1.0),
    'language_model': dict(lr_mult=1.0, decay_mult=1.0)}))
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs, val_begin=1)  # validate at the end (base: never)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[7], gamma=0.1),
]
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_epochs))
randomness = dict(seed=0)
