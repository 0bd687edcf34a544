# QKS on NUS-WIDE (925 seen / 81 unseen labels), ViT-B/16 CLIP, official recipe (jasonseu/QKS README): Q-Former with
# 7 layers and 12 query tokens, ASL (gamma- 4, clip 0, x1000 mean), AdamW 1e-5 / wd 1e-4, ReduceLROnPlateau
# (patience 1, x0.1), 60 epochs, 64 images per step. Model selection and the plateau signal use a validation split
# carved from the training images (seen labels; tools/dataset_converters/nuswide_to_json.py), never the test set.
# Before training:
#   python tools/dataset_converters/nuswide_to_json.py datasets/NUS-WIDE data/nuswide
#   python tools/misc/make_category_embeddings.py data/nuswide/labels_seen.txt data/nuswide/labels_unseen.txt \
#       data/nuswide/label_embeddings_qks_pool.safetensors --model ViT-B-16-quickgelu \
#       --pretrained checkpoints/clip_vit_b16_openai.bin --templates qks_pool
# (checkpoints/clip_vit_b16_openai.bin = open_clip_pytorch_model.bin of timm/vit_base_patch16_clip_224.openai).
_base_ = 'mmpretrain::_base_/default_runtime.py'

# queryvision_mm.mmpretrain_plugin: QKS / MaO modules in mmpretrain's registries (queryvision_mm/mmpretrain_plugin.py);
# queryvision_mm.safe_load: applies the safe (weights_only) checkpoint-loading shim (queryvision_mm/safe_load.py)
custom_imports = dict(imports=['queryvision_mm.mmpretrain_plugin', 'queryvision_mm.safe_load'],
                      allow_failed_imports=False)
default_scope = 'mmpretrain'

data_root = 'data/nuswide/'
img_root = 'datasets/NUS-WIDE/Flickr/'
clip_weights = 'checkpoints/clip_vit_b16_openai.bin'
label_file = data_root + 'label_embeddings_qks_pool.safetensors'
num_seen = 925
topk = (3, 5)

model = dict(
    type='QVQKSClassifier',
    data_preprocessor=dict(
        mean=[122.770938, 116.7460125, 104.09373615], std=[68.5005327, 66.6321579, 70.32316305], to_rgb=True),
    backbone=dict(type='QVCLIPVisionTokens', model_name='ViT-B-16-quickgelu', pretrained=clip_weights, frozen=True,
                  keep_cls_token=True),
    neck=dict(type='QVQFormerNeck', num_layers=7, num_queries=12, encoder_width=768, hidden_size=768, num_heads=12,
              ffn_dims=3072, dropout=0.1, cross_attention_freq=1),
    head=dict(type='QVQKSHead', embed_file=label_file, num_seen=num_seen, in_dims=768, out_dims=512, reduce='max',
              loss=dict(type='QVAsymmetricLoss', gamma_pos=0.0, gamma_neg=4.0, clip=0.0, eps=1e-5,
                        reduction='mean', loss_weight=1000.0)))

# official: Resize(224, bicubic) -> CenterCrop(224) -> CutoutPIL(0.5) -> flip -> RandAugment; test: CLIP transform
train_pipeline = [
    dict(type='QVLoadImageFromFile'),  # skips (and names) a rare unreadable image; stops above 0.1 % of the loads
    dict(type='ResizeEdge', scale=224, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    # official CutoutPIL(cutout_factor=0.5) (QKS lib/cutout.py, from ASL): always, 113 px square at 224, random colour
    dict(type='QVCutoutPIL', size_factor=0.5, pad_val='random', prob=1.0),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandAugment', policies='timm_increasing', num_policies=2, total_level=10, magnitude_level=9,
         hparams=dict(pad_val=[104, 116, 124], interpolation='bicubic')),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='QVLoadImageFromFile', skip_unreadable=False),  # an unreadable test image is an error naming it
    dict(type='ResizeEdge', scale=224, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
dataset_type = 'QVZSLMultiLabelDataset'
train_dataloader = dict(
    batch_size=8,  # x 8 GPUs = 64 (official)
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, ann_file=data_root + 'annotations/train.json', data_prefix=img_root,
                 seen_only=True, pipeline=train_pipeline,
                 # official loader (lib/dataset.py) drops images without a seen positive (Open Images keeps images
                 # with annotated negatives only in its training file; NUS-WIDE's converter already drops them)
                 filter_cfg=dict(filter_empty_gt=True)))
eval_loader = dict(batch_size=32, num_workers=8, persistent_workers=True,
                   sampler=dict(type='DefaultSampler', shuffle=False))
val_dataloader = dict(
    **eval_loader,
    dataset=dict(type=dataset_type, ann_file=data_root + 'annotations/val.json', data_prefix=img_root,
                 seen_only=True, pipeline=test_pipeline))
test_dataloader = dict(
    **eval_loader,
    dataset=dict(type=dataset_type, ann_file=data_root + 'annotations/test.json', data_prefix=img_root,
                 pipeline=test_pipeline))
# validation (model selection, LR plateau): seen labels of held-out training images; test: the QKS protocol
val_evaluator = dict(type='QVZSLMultiLabelMetric', num_seen=num_seen, topk=topk, splits=('seen', ),
                     negatives='complement')
test_evaluator = dict(type='QVZSLMultiLabelMetric', num_seen=num_seen, topk=topk, splits=('zsl', 'gzsl', 'seen'),
                      negatives='complement')

optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4))
param_scheduler = dict(type='ReduceOnPlateauLR', monitor='seen/score', rule='greater', patience=1, factor=0.1,
                       by_epoch=True)
train_cfg = dict(by_epoch=True, max_epochs=60, val_interval=1)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=2, save_best='seen/score',
                                     rule='greater'))
randomness = dict(seed=0)
# fail before training / testing when the head's label bank (embed_file, num_seen), the annotation files' metainfo
# and the evaluators' num_seen / negatives disagree (e.g. the Open Images converter merged MIDs sharing a name)
custom_hooks = [dict(type='QVZSLConsistencyHook')]
auto_scale_lr = dict(base_batch_size=64)
