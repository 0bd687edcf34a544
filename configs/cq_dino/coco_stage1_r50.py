# CQ-DINO stage 1 on COCO, ResNet-50 (torchvision ImageNet weights): backbone + category-query selector
# pre-training (selector BCE x 0.1, no boxes) for coco_r50.py; the official COCO recipe also starts stage 2 from a
# stage-1 checkpoint. Same recipe as the V3Det stage 1 (configs/_base_/cq_dino_stage1.py, our choice).
# Writes work_dirs/cq_dino_coco_stage1_r50/epoch_10.pth = coco_r50.py's load_from.
_base_ = ['./coco_r50.py', '../_base_/cq_dino_stage1.py']

model = dict(selector_only=True)
load_from = None
work_dir = 'work_dirs/cq_dino_coco_stage1_r50'
val_evaluator = [_base_.recall_metric]
test_evaluator = val_evaluator
optim_wrapper = _base_.stage1_optim_wrapper
train_cfg = _base_.stage1_train_cfg
param_scheduler = _base_.stage1_param_scheduler
