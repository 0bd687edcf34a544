# Sparse Semi-DETR demo on the embedded synthetic shapes data: Semi-DETR's demo_shapes.py (same shrunk model,
# data, optimiser, EMA and schedule) + QRM + RPFM, so that the two demos differ only by the paper's modules.
#   python tools/train.py configs/sparse_semi_detr/demo_shapes.py
_base_ = ['../semi_detr/demo_shapes.py', '../_base_/sparse_semi_detr_modules.py']

model = _base_.sparse_semi_detr
