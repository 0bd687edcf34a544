# Semi-DETR, COCO-Partial 1 % (fold 1): 8 GPUs x 5 images (1 labeled : 4 unlabeled), 120k iterations,
# one-to-one from 60k, unsup weight 4, AdamW 1e-4 constant (official schedule). Reported: see README "Semi-DETR".
# Splits: python tools/dataset_converters/split_coco.py --labeled-percent 1
# Other folds: --cfg-options with the fold's file names, e.g. instances_train2017.2@1.json
_base_ = '../_base_/semi_detr_dino-4scale_r50_coco.py'

labeled_dataset = _base_.labeled_dataset
labeled_dataset.ann_file = 'semi_anns/instances_train2017.1@1.json'
unlabeled_dataset = _base_.unlabeled_dataset
unlabeled_dataset.ann_file = 'semi_anns/instances_train2017.1@1-unlabeled.json'
train_dataloader = dict(dataset=dict(datasets=[labeled_dataset, unlabeled_dataset]))
