# CQ-DINO, V3Det, Swin-L (384, window 12), 5 feature levels, activation checkpointing in the backbone
# (reported 53.0 AP). Backbone and selector come from stage 1 (cq_dino/v3det_stage1_swinl.py, ImageNet-22k init).
_base_ = ['../_base_/cq_dino_r50_v3det.py', '../_base_/cq_dino_swinl.py']

model = _base_.cq_dino_swinl_model
load_from = 'work_dirs/cq_dino_v3det_stage1_swinl/epoch_10.pth'  # last checkpoint of cq_dino/v3det_stage1_swinl.py
