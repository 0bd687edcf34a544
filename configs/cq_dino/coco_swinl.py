# CQ-DINO on COCO, Swin-L (reported 58.5 AP, 24 epochs): coco_r50.py with the Swin-L backbone.
_base_ = ['./coco_r50.py', '../_base_/cq_dino_swinl.py']

model = _base_.cq_dino_swinl_model
