# Swin-L (384, window 12) for CQ-DINO: 5 feature levels, activation checkpointing in the backbone, raw C5 = 1536
# channels for the selector. Used by cq_dino/v3det_swinl.py and cq_dino/coco_swinl.py via
# ``model = _base_.cq_dino_swinl_model``; their stage-1 configs start the backbone from the official ImageNet-22k
# 384 Swin-L release (``cq_dino_swinl_pretrained``), stage 2 takes it from the stage-1 checkpoint (load_from).
cq_dino_swinl_pretrained = dict(
    type='Pretrained',
    checkpoint='https://github.com/SwinTransformer/storage/releases/download/v1.0.0/'
    'swin_large_patch4_window12_384_22k.pth')
cq_dino_swinl_model = dict(
    num_feature_levels=5,
    backbone=dict(
        _delete_=True, type='SwinTransformer', pretrain_img_size=384, embed_dims=192, depths=[2, 2, 18, 2],
        num_heads=[6, 12, 24, 48], window_size=12, mlp_ratio=4, qkv_bias=True, qk_scale=None, drop_rate=0.,
        attn_drop_rate=0., drop_path_rate=0.2, patch_norm=True, out_indices=(0, 1, 2, 3), with_cp=True,
        convert_weights=True, init_cfg=None),
    neck=dict(in_channels=[192, 384, 768, 1536], num_outs=5),
    encoder=dict(layer_cfg=dict(self_attn_cfg=dict(num_levels=5))),
    decoder=dict(layer_cfg=dict(cross_attn_cfg=dict(num_levels=5))),
    language_model=dict(img_in_channels=1536))
