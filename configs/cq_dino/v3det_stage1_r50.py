# CQ-DINO stage 1 on V3Det, ResNet-50 (torchvision ImageNet weights): selector pre-training for v3det_r50.py.
# Same recipe as v3det_stage1_swinb.py.
# Writes work_dirs/cq_dino_v3det_stage1_r50/epoch_10.pth = v3det_r50.py's load_from.
_base_ = ['./v3det_r50.py', '../_base_/cq_dino_stage1.py']

model = dict(selector_only=True)
load_from = None
work_dir = 'work_dirs/cq_dino_v3det_stage1_r50'
val_evaluator = [_base_.recall_metric]
test_evaluator = val_evaluator
optim_wrapper = _base_.stage1_optim_wrapper
train_cfg = _base_.stage1_train_cfg
param_scheduler = _base_.stage1_param_scheduler
