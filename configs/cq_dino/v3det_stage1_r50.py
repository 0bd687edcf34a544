# CQ-DINO stage 1 on V3Det, ResNet-50 (torchvision ImageNet weights): selector pre-training for v3det_r50.py
# (then train v3det_r50.py with load_from=<this run's checkpoint>). Same recipe as v3det_stage1_swinb.py.
_base_ = ['./v3det_r50.py', '../_base_/cq_dino_stage1.py']

model = dict(selector_only=True)
val_evaluator = [_base_.recall_metric]
test_evaluator = val_evaluator
optim_wrapper = _base_.stage1_optim_wrapper
train_cfg = dict(max_epochs=_base_.stage1_max_epochs, val_interval=_base_.stage1_max_epochs)
param_scheduler = _base_.stage1_param_scheduler
