# CQ-DINO stage 1 on V3Det, Swin-B (ImageNet-22k, 384): pre-train the backbone and the category-query selector alone
# "to establish category recall" (paper: 10 epochs; the official repository ships only stage 2, which loads this
# checkpoint via load_from). Only the selector's asymmetric loss is trained (model.selector_only=True freezes every
# other parameter, and Swin's output norms of the unused out_indices 1 and 2); evaluation reports the selector's
# recall@100 and category recall (ARC), no boxes.
# Optimiser and schedule: configs/_base_/cq_dino_stage1.py (not published; our choice).
# Writes work_dirs/cq_dino_v3det_stage1_swinb/epoch_10.pth = v3det_swinb.py's load_from.
_base_ = ['./v3det_swinb.py', '../_base_/cq_dino_stage1.py']

model = dict(
    selector_only=True,
    backbone=dict(init_cfg=dict(
        _delete_=True,  # the base's init_cfg is None (stage 2 takes the backbone from this stage's checkpoint)
        type='Pretrained',
        checkpoint='https://github.com/SwinTransformer/storage/releases/download/v1.0.0/'
        'swin_base_patch4_window12_384_22k.pth')))
load_from = None
work_dir = 'work_dirs/cq_dino_v3det_stage1_swinb'
val_evaluator = [_base_.recall_metric]
test_evaluator = val_evaluator
optim_wrapper = _base_.stage1_optim_wrapper
train_cfg = _base_.stage1_train_cfg
param_scheduler = _base_.stage1_param_scheduler
