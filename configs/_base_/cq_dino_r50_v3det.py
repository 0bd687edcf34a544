# CQ-DINO (category-query DINO) on V3Det, ResNet-50, mmdet 3.3 edition. Facts: README "CQ-DINO"
# (official code RedAIGC/CQ-DINO, a fork of mmdet 3.3). The detector is mmdet's Grounding DINO with its BERT branch
# replaced by QVCategoryQuerySelector; dataset, metric and schedule follow the official V3Det configs.
# Before training: python tools/misc/make_category_embeddings.py \
#     data/V3Det/annotations/category_name_13204_v3det_2023_v1.txt \
#     data/V3Det/annotations/v3det_clip_embeddings.safetensors --model local-dir:/path/to/clip
# (or set model.language_model.embed_file=None for a random initialisation).
_base_ = 'mmdet::grounding_dino/grounding_dino_r50_scratch_8xb2_1x_coco.py'

# queryvision_mm: the detection plugin (mmdet registries); queryvision_mm.safe_load: applies the safe
# (weights_only) checkpoint-loading shim, also for mmdet's own tools/train.py (queryvision_mm/safe_load.py)
custom_imports = dict(imports=['queryvision_mm', 'queryvision_mm.safe_load'], allow_failed_imports=False)

data_root = 'data/V3Det/'
num_classes = 13204
topk = 100  # K = target_len = max_text_len (official: 100 for V3Det)

model = dict(
    type='QVCQDINO',
    language_model=dict(
        _delete_=True,
        type='QVCategoryQuerySelector',
        num_classes=num_classes,
        img_in_channels=2048,  # raw C5 of the backbone (not the neck)
        embed_dims=768,
        kv_dims=512,
        num_layers=2,
        num_heads=4,
        ffn_dims=3072,
        dropout=0.1,
        topk=topk,
        relation=dict(
            type='QVTreeAggregator',
            tree_file=data_root + 'annotations/v3det_2023_v1_category_tree.json',
            num_classes=num_classes,  # category ids 1..13204 = labels 0..13203 (V3DetDataset order)
            w_min=0.4, w_span=0.4, max_count=13204, max_level=7),  # official constants (paper text: w = 0.3)
        embed_file=data_root + 'annotations/v3det_clip_embeddings.safetensors',
        # the dataset's class list (the label_file V3DetDataset reads): the embedding file's names are checked
        # against it name by name, not only their count
        class_names=data_root + 'annotations/category_name_13204_v3det_2023_v1.txt',
        force_gt_in_topk=False),  # official: GT categories are not forced into the top-K
    selector_loss=dict(type='QVAsymmetricLoss', gamma_neg=7.0, gamma_pos=0.0, clip=0.05, reduction='sum',
                       loss_weight=1.0),
    # parent mask; root=None: the top-level node reaching the most categories (V3Det: n00001740 "entity");
    # strict=False: categories outside the tree (V3Det#15/#18) are kept and counted in a warning, not an error
    hierarchy=dict(tree_file=data_root + 'annotations/v3det_2023_v1_category_tree.json', root=None, strict=False),
    text_self_attention=False,
    # official: backbone + neck under CUDA fp16 autocast, the rest fp32 (a no-op on CPU and under --amp, whose
    # QVAmpOptimWrapper autocasts the whole forward)
    use_autocast=True,
    # official num_cp=6: activation checkpointing of all 6 encoder layers, with torch.utils.checkpoint (no fairscale)
    encoder=dict(num_cp=6),
    bbox_head=dict(num_classes=256, contrastive_cfg=dict(max_text_len=topk, log_scale='auto', bias=True)),
    test_cfg=dict(max_per_img=300))

backend_args = None
train_pipeline = [
    dict(type='QVLoadImageFromFile', backend_args=backend_args),  # skips (and names) a rare unreadable image
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoiceResize', scales=[(s, 1333) for s in range(480, 801, 32)], keep_ratio=True),  # no crop
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='QVLoadImageFromFile', skip_unreadable=False, backend_args=backend_args),  # error naming a bad file
    dict(type='FixScaleResize', scale=(800, 1333), keep_ratio=True, backend='pillow'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    _delete_=True,
    batch_size=2,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type='V3DetDataset',
        data_root=data_root,
        ann_file='annotations/v3det_2023_v1_train.json',
        data_prefix=dict(img=''),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline,
        backend_args=backend_args))  # official: no repeat-factor sampling
val_dataloader = dict(
    _delete_=True,
    batch_size=4,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='V3DetDataset',
        data_root=data_root,
        ann_file='annotations/v3det_2023_v1_val.json',
        data_prefix=dict(img=''),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader
# COCO-style AP at 300 detections per image with multi-process evaluation (as V3Det's official protocol; mmdet's
# COCOevalMP fixed at 8 processes -> QVCocoMetric: mp_eval_procs processes over mp_eval_chunks category blocks, lower
# them on a machine with less RAM), plus the selector's category recall@K / ARC. Child configs edit ``coco_metric``
# and rebuild the list. Offline evaluation from dumped predictions: README, CQ-DINO.
coco_metric = dict(
    type='QVCocoMetric', ann_file=data_root + 'annotations/v3det_2023_v1_val.json', metric='bbox', use_mp_eval=True,
    mp_eval_procs=8, mp_eval_chunks=None, proposal_nums=[300], format_only=False, backend_args=backend_args)
recall_metric = dict(type='QVCategoryRecallMetric')
val_evaluator = [coco_metric, recall_metric]
test_evaluator = val_evaluator

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=4e-4, weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(
        custom_keys={
            'absolute_pos_embed': dict(decay_mult=0.),
            'backbone': dict(lr_mult=0.01, decay_mult=10.0),
            'language_model': dict(lr_mult=0.01, decay_mult=10.0),
        },
        bypass_duplicate=True))
max_epochs = 24
# V3Det: no validation during training, as officially (13,204 classes x ~30k images take hours of COCO evaluation
# while the other ranks wait). mmengine validates at the last epoch whatever val_interval says, so val_begin is put
# beyond any epoch; evaluate with tools/test.py. COCO and stage-1 configs set val_begin=1 (validation at the end).
train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs,
                 val_begin=10**9)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[12, 18], gamma=0.1),
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
randomness = dict(seed=2025)
# collectives wait up to 4 h (torch's default: 10 min): in a distributed tools/test.py run, rank 0 alone computes the
# V3Det COCO evaluation (an hour or more) while the other ranks wait in the broadcast of its results
env_cfg = dict(dist_cfg=dict(backend='nccl', timeout=4 * 3600))
# DDP needs no find_unused_parameters: stage 2 feeds every backbone output to the neck, and stage 1 (selector_only)
# freezes what cannot reach the selector (e.g. Swin's output norms of the unused out_indices); every trainable
# parameter gets a gradient in one step (tests/test_models/test_cq_dino_ddp_params.py)
