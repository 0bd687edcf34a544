# Semi-DETR demo (demo_shapes.py) with a TensorBoard backend: scalars (losses, lr, the number of pseudo-labels) and,
# every 50 iterations, the teacher's pseudo-labels beside the student's predictions on 2 unlabeled images (the demo's
# QVPseudoLabelVisHook) go to work_dirs/semi_detr_demo_shapes_tensorboard/<timestamp>/vis_data/ as TensorBoard event
# files (and as PNG/JSON through the LocalVisBackend):
#   python tools/train.py configs/semi_detr/demo_shapes_tensorboard.py
#   tensorboard --logdir work_dirs/semi_detr_demo_shapes_tensorboard
# mmengine's TensorboardVisBackend writes through torch.utils.tensorboard (package `tensorboard`,
# requirements/tests.txt). Any other config gets the same with this `visualizer` setting and
# custom_hooks.append(dict(type='QVPseudoLabelVisHook', interval=...)).
_base_ = './demo_shapes.py'

visualizer = dict(vis_backends=[dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')])
# (the QVPseudoLabelVisHook comes from demo_shapes.py's custom_hooks)
