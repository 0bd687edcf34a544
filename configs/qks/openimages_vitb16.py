# QKS on Open Images V4 (2018_04; 7,186 trainable seen / 400 most frequent unseen labels): Q-Former with 8 layers and
# 22 query tokens, BCE (mean over B x C; unannotated and annotated-negative labels are both negatives in training),
# F1@10/20, explicit negatives in evaluation (unannotated = unknown). Converter:
#   python tools/dataset_converters/openimages_to_json.py datasets/OpenImages data/openimages
_base_ = './nuswide_vitb16.py'

data_root = 'data/openimages/'
img_root = 'datasets/OpenImages/'
label_file = data_root + 'label_embeddings_qks_pool.safetensors'
# the trainable MIDs; the converter merges MIDs sharing a name (it warns and records metainfo.merged_mids): then use
# its num_seen here; QVZSLConsistencyHook stops training / testing on any mismatch with the annotation files
num_seen = 7186
topk = (10, 20)

model = dict(
    neck=dict(num_layers=8, num_queries=22),
    head=dict(embed_file=label_file, num_seen=num_seen,
              loss=dict(_delete_=True, type='mmpretrain.CrossEntropyLoss', use_sigmoid=True, reduction='mean',
                        loss_weight=1.0)))
test_pipeline = [
    dict(type='QVLoadImageFromFile', skip_unreadable=False),
    dict(type='ResizeEdge', scale=224, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs', algorithm_keys=['gt_negative']),
]
train_dataloader = dict(dataset=dict(ann_file=data_root + 'annotations/train.json', data_prefix=img_root))
val_dataloader = dict(dataset=dict(ann_file=data_root + 'annotations/val.json', data_prefix=img_root,
                                   pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(ann_file=data_root + 'annotations/test.json', data_prefix=img_root,
                                    pipeline=test_pipeline))
val_evaluator = dict(num_seen=num_seen, topk=topk, negatives='explicit')
test_evaluator = dict(num_seen=num_seen, topk=topk, negatives='explicit')
