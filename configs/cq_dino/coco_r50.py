# CQ-DINO on COCO, ResNet-50: K = 30 selected categories, real self-attention across the 80 category queries (the
# official module attends over a length-1 sequence; set model.language_model.relation.degenerate_compat=True for
# that behaviour), selector loss = summed BCE (ASL with no focusing) x 0.1, no hierarchy.
#   python tools/misc/make_category_embeddings.py data/coco/annotations/instances_val2017.json \
#       data/coco/annotations/coco_clip_embeddings.safetensors --model local-dir:/path/to/clip
_base_ = '../_base_/cq_dino_r50_v3det.py'

data_root = 'data/coco/'
topk = 30
# the datasets' classes in label order (mmdet's CocoDataset.METAINFO; the categories of instances_*2017.json by id):
# the datasets get them as metainfo and the selector checks the embedding file's class list against them by name
coco_classes = ('person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep',
    'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
    'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich',
    'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant', 'bed',
    'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone', 'microwave', 'oven',
    'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear', 'hair drier', 'toothbrush')
model = dict(
    language_model=dict(
        num_classes=80, topk=topk,
        relation=dict(_delete_=True, type='QVCategorySelfAttention', embed_dims=768, num_heads=8),
        embed_file=data_root + 'annotations/coco_clip_embeddings.safetensors', class_names=coco_classes),
    selector_loss=dict(gamma_neg=0.0, gamma_pos=0.0, clip=0.0, loss_weight=0.1),
    hierarchy=None,
    bbox_head=dict(contrastive_cfg=dict(max_text_len=topk)))
train_dataloader = dict(
    dataset=dict(type='CocoDataset', data_root=data_root, ann_file='annotations/instances_train2017.json',
                 data_prefix=dict(img='train2017/'), filter_cfg=dict(filter_empty_gt=True, min_size=32),
                 metainfo=dict(classes=coco_classes)))
val_dataloader = dict(
    dataset=dict(type='CocoDataset', data_root=data_root, ann_file='annotations/instances_val2017.json',
                 data_prefix=dict(img='val2017/'), metainfo=dict(classes=coco_classes)))
test_dataloader = val_dataloader
# AP at 300 detections per image with the multi-process evaluator, as the paper's COCO numbers (official
# cqdino_sa_swinl_coco.py: CQCocoMetric(use_mp_eval=True, proposal_nums=[300])); pycocotools' own summary
# (use_mp_eval=False) would report AP at maxDets 100. The head keeps max_per_img=300 detections (base config).
coco_metric = dict(_base_.coco_metric, ann_file=data_root + 'annotations/instances_val2017.json', use_mp_eval=True,
                   proposal_nums=[300])
val_evaluator = [coco_metric, _base_.recall_metric]
test_evaluator = val_evaluator
train_cfg = dict(val_begin=1)  # COCO: validation at the end of training (the V3Det base never validates)
# backbone + selector from stage 1, as the official COCO recipe
load_from = 'work_dirs/cq_dino_coco_stage1_r50/epoch_10.pth'  # last checkpoint of cq_dino/coco_stage1_r50.py
