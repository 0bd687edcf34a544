# CQ-DINO, V3Det, Swin-B (ImageNet-22k, 384, window 12), the paper's main V3Det model (reported 52.3 AP).
# Official recipe: backbone and selector come from a stage-1 checkpoint (load_from); see cq_dino/v3det_stage1_swinb.py.
_base_ = '../_base_/cq_dino_r50_v3det.py'

model = dict(
    backbone=dict(
        _delete_=True, type='SwinTransformer', pretrain_img_size=384, embed_dims=128, depths=[2, 2, 18, 2],
        num_heads=[4, 8, 16, 32], window_size=12, mlp_ratio=4, qkv_bias=True, qk_scale=None, drop_rate=0.,
        attn_drop_rate=0., drop_path_rate=0.3, patch_norm=True, out_indices=(1, 2, 3), with_cp=False,
        convert_weights=True, init_cfg=None),
    neck=dict(in_channels=[256, 512, 1024]),
    language_model=dict(img_in_channels=1024))
# backbone + selector from stage 1: the last checkpoint of cq_dino/v3det_stage1_swinb.py (its work_dir); with another
# stage-1 work dir or file: --cfg-options load_from=PATH
load_from = 'work_dirs/cq_dino_v3det_stage1_swinb/epoch_10.pth'
