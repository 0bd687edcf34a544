# CQ-DINO stage 1 on the demo V3Det set: backbone + category-query selector only (model.selector_only=True), selector
# recall@K / ARC evaluation. configs/cq_dino/demo_v3det.py starts from its checkpoint when run by
# tools/run_demo.sh (load_from).
_base_ = './demo_v3det.py'

work_dir = 'work_dirs/cq_dino_demo_v3det_stage1'  # writes epoch_8.pth = demo_v3det.py's load_from
load_from = None
model = dict(selector_only=True)
val_evaluator = [_base_.recall_metric]
test_evaluator = val_evaluator
max_epochs = 8
train_cfg = dict(max_epochs=max_epochs, val_interval=4)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[6], gamma=0.1),
]
default_hooks = dict(checkpoint=dict(interval=max_epochs))
