# CQ-DINO, V3Det, ResNet-50 (ImageNet weights from torchvision via mmdet's init_cfg), for users without Swin
# weights. 8 GPUs x 2 images, 24 epochs. Embeddings / tree: see configs/_base_/cq_dino_r50_v3det.py.
# Backbone and selector from stage 1 (cq_dino/v3det_stage1_r50.py): without it the selector starts random at 0.01x
# the learning rate.
_base_ = '../_base_/cq_dino_r50_v3det.py'

load_from = 'work_dirs/cq_dino_v3det_stage1_r50/epoch_10.pth'  # last checkpoint of cq_dino/v3det_stage1_r50.py
