# QKS demo on real photos shipped by installed packages (scikit-image, scikit-learn, matplotlib), 16 seen / 7 unseen
# labels (queryvision_mm/testing/demo_data/demo_photos.py). Everything is the NUS-WIDE recipe (ASL, max over query
# tokens, prompt-pool label embeddings, seen-only validation, ZSL/GZSL test) at toy size so that it trains on a CPU in about a
# minute. No CLIP weights can be downloaded here, so the frozen CLIP is open_clip's CLIP with random weights saved to
# data/demo_qks/clip_random: the demo shows the pipeline end to end and that seen labels are learnt; zero-shot
# numbers need real weights (change clip_dir and the embedding file). The whole job:
#   bash tools/run_demo.sh configs/qks/demo_photos.py
# which runs
#   python tools/misc/make_demo_data.py --kind qks --out-dir data/demo_qks --random-clip
#   python tools/misc/make_category_embeddings.py data/demo_qks/labels_seen.txt data/demo_qks/labels_unseen.txt \
#       data/demo_qks/label_embeddings_qks_pool.safetensors --model local-dir:data/demo_qks/clip_random \
#       --templates qks_pool
#   python tools/train.py configs/qks/demo_photos.py; python tools/test.py configs/qks/demo_photos.py CKPT
_base_ = './nuswide_vitb16.py'

data_root = 'data/demo_qks/'
clip_dir = data_root + 'clip_random'
label_file = data_root + 'label_embeddings_qks_pool.safetensors'
num_seen = 16
topk = (1, 3)
size = 64

model = dict(
    backbone=dict(model_name='local-dir:' + clip_dir, pretrained=None),
    neck=dict(num_layers=2, num_queries=6, encoder_width=128, hidden_size=128, num_heads=2, ffn_dims=256),
    head=dict(embed_file=label_file, num_seen=num_seen, in_dims=128, out_dims=64))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=size, crop_ratio_range=(0.6, 1.0), backend='pillow',
         interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=size, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=size),
    dict(type='PackInputs'),
]
loader = dict(num_workers=0, persistent_workers=False)
train_dataloader = dict(batch_size=16, **loader,
                        dataset=dict(ann_file=data_root + 'annotations/train.json', data_prefix=data_root,
                                     pipeline=train_pipeline))
val_dataloader = dict(batch_size=16, **loader,
                      dataset=dict(ann_file=data_root + 'annotations/val.json', data_prefix=data_root,
                                   pipeline=test_pipeline))
test_dataloader = dict(batch_size=16, **loader,
                       dataset=dict(ann_file=data_root + 'annotations/test.json', data_prefix=data_root,
                                    pipeline=test_pipeline))
val_evaluator = dict(num_seen=num_seen, topk=topk)
test_evaluator = dict(num_seen=num_seen, topk=topk)
# a randomly initialised Q-Former on random CLIP features needs a larger step than the official 1e-5 (and more
# patience than 1 epoch on a 48-image validation set) to learn in 40 epochs of 12 steps
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = dict(patience=4)
train_cfg = dict(max_epochs=40)
default_hooks = dict(logger=dict(interval=4))
