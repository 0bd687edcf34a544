# CQ-DINO stage 1 on V3Det, Swin-B (ImageNet-22k, 384): pre-train the backbone and the category-query selector alone
# "to establish category recall" (paper: 10 epochs; the official repository ships only stage 2, which loads this
# checkpoint via load_from). Only the selector's asymmetric loss is trained (model.selector_only=True freezes every
# other parameter); evaluation reports the selector's recall@100 and category recall (ARC), no boxes.
# The optimiser settings of stage 1 are not published: ours are AdamW 1e-4, backbone x0.1, step at epoch 8.
_base_ = './v3det_swinb.py'

model = dict(
    selector_only=True,
    backbone=dict(init_cfg=dict(
        _delete_=True,  # the base's init_cfg is None (stage 2 takes the backbone from this stage's checkpoint)
        type='Pretrained',
        checkpoint='https://github.com/SwinTransformer/storage/releases/download/v1.0.0/'
        'swin_base_patch4_window12_384_22k.pth')))
load_from = None
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
