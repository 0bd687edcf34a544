# CQ-DINO stage 1 on V3Det, ResNet-50 (torchvision ImageNet weights): selector pre-training for v3det_r50.py
# (then train v3det_r50.py with load_from=<this run's checkpoint>). Same recipe as v3det_stage1_swinb.py.
_base_ = './v3det_r50.py'

model = dict(selector_only=True)
val_evaluator = [_base_.recall_metric]
test_evaluator = val_evaluator
optim_wrapper = dict(
    optimizer=dict(lr=1e-4),
    paramwise_cfg=dict(custom_keys={
        'absolute_pos_embed': dict(decay_mult=0.),
        'backbone': dict(lr_mult=0.1, decay_mult=1.0),
        'language_model': dict(lr_mult=1.0, decay_mult=1.0)}))
max_epochs = 10
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8], gamma=0.1),
]
