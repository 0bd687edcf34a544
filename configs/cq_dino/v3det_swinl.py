# CQ-DINO, V3Det, Swin-L (384, window 12), 5 feature levels, activation checkpointing in the backbone
# (reported 53.0 AP).
_base_ = ['../_base_/cq_dino_r50_v3det.py', '../_base_/cq_dino_swinl.py']

model = _base_.cq_dino_swinl_model
load_from = 'stage1/cqdino_swinl_v3det_stage1.pth'
