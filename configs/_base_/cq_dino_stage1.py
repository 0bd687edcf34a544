# CQ-DINO stage-1 recipe (selector pre-training), shared by configs/cq_dino/*_stage1_*.py. The paper gives
# 10 epochs and no optimiser settings: ours are AdamW 1e-4, backbone x0.1, selector x1, step at epoch 8. Names are
# prefixed so that this file can be a second base next to a stage-2 config (mmengine forbids duplicate keys across
# bases); the child assigns them.
stage1_max_epochs = 10
# stage 1 validates (selector recall / ARC only, no COCO evaluation) at its end; it saves
# <work_dir>/epoch_10.pth, the file its stage-2 config's load_from names
stage1_train_cfg = dict(max_epochs=stage1_max_epochs, val_interval=stage1_max_epochs, val_begin=1)
stage1_optim_wrapper = dict(
    optimizer=dict(lr=1e-4),
    paramwise_cfg=dict(custom_keys={
        'absolute_pos_embed': dict(decay_mult=0.),
        'backbone': dict(lr_mult=0.1, decay_mult=1.0),
        'language_model': dict(lr_mult=1.0, decay_mult=1.0)}))
stage1_param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=stage1_max_epochs, by_epoch=True, milestones=[8], gamma=0.1),
]
