# CQ-DINO, V3Det, ResNet-50 (ImageNet weights from torchvision via mmdet's init_cfg), for users without the Swin
# stage-1 weights. 8 GPUs x 2 images, 24 epochs. Embeddings / tree: see configs/_base_/cq_dino_r50_v3det.py.
_base_ = '../_base_/cq_dino_r50_v3det.py'
