# CQ-DINO stage 1 on COCO, Swin-L (ImageNet-22k, 384, official SwinTransformer release): backbone + category-query
# selector pre-training for coco_swinl.py (model.selector_only=True also freezes Swin's output norms of the unused
# out_indices 0, 1, 2). Same recipe as coco_stage1_r50.py.
# Writes work_dirs/cq_dino_coco_stage1_swinl/epoch_10.pth = coco_swinl.py's load_from.
_base_ = ['./coco_swinl.py', '../_base_/cq_dino_stage1.py']

model = dict(selector_only=True, backbone=dict(init_cfg=dict(_base_.cq_dino_swinl_pretrained, _delete_=True)))
load_from = None
work_dir = 'work_dirs/cq_dino_coco_stage1_swinl'
val_evaluator = [_base_.recall_metric]
test_evaluator = val_evaluator
optim_wrapper = _base_.stage1_optim_wrapper
train_cfg = _base_.stage1_train_cfg
param_scheduler = _base_.stage1_param_scheduler
