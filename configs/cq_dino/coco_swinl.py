# CQ-DINO on COCO, Swin-L (reported 58.5 AP, 24 epochs): coco_r50.py with the Swin-L backbone. Backbone and
# selector come from stage 1 (cq_dino/coco_stage1_swinl.py, ImageNet-22k Swin-L init), never from random weights.
_base_ = ['./coco_r50.py', '../_base_/cq_dino_swinl.py']

model = _base_.cq_dino_swinl_model
load_from = 'work_dirs/cq_dino_coco_stage1_swinl/epoch_10.pth'  # last checkpoint of cq_dino/coco_stage1_swinl.py
