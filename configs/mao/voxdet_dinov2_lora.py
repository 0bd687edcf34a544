# MaO-DINOv2 fine-tuned: stage A (LoRA on DINOv2-base query/key/value, rank 256, alpha 32, dropout 0.1; InfoNCE
# between the mean of a scene's object-crop embeddings and the query-object embedding, in-batch negatives; AdamW
# 5e-5 decayed by 0.93 down to ~1e-6; batch 128 = 4 GPUs x 32; one epoch on the VoxDet (OWID) training scenes), then
# the zero-shot pipeline (stage B on the adapted encoder). Paper (authors' README): VoxDet mAP 83.70.
#   1. proposals for the training scenes (OWLv2 boxes; stage B, SAM masks and the adapter, not trained yet, off):
#      python tools/mao/extract.py configs/mao/voxdet_dinov2_lora.py --work-dir work_dirs/owid_proposals \
#          --cfg-options dataset.sets="['OWID']" describer.refine=None describer.masks=None \
#          describer.encoder.lora_adapter=None
#   2. stage A:  tools/dist_train.sh configs/mao/voxdet_dinov2_lora.py 4   (adapter: WORK_DIR/lora_adapter)
#   3. index + evaluate with the adapter merged:  python tools/mao/extract.py configs/mao/voxdet_dinov2_lora.py
_base_ = './voxdet_dinov2_zeroshot.py'

dinov2_dir = 'checkpoints/dinov2-base'
work_dir = 'work_dirs/voxdet_dinov2_lora'
describer = dict(
    type='QVMaODescriber',
    encoder=dict(type='QVDINOv2CropEncoder', model_dir=dinov2_dir, input_size=224,
                 lora_adapter=work_dir + '/lora_adapter'),
    proposals={{_base_.model.proposals}},
    masks={{_base_.model.masks}},
    refine={{_base_.model.refine}})
model = dict(
    _delete_=True,
    type='QVMaOContrastiveModel',
    encoder=dict(type='QVDINOv2CropEncoder', model_dir=dinov2_dir, input_size=224),
    lora=dict(r=256, lora_alpha=32, lora_dropout=0.1, target_modules=['query', 'key', 'value']),
    temperature=0.07,
    # a step backpropagates through every crop of 32 scenes (up to max_crops=16 each) + their queries: ~179 MiB of
    # activations per crop in fp32 without checkpointing (up to ~95 GiB per GPU), ~10 MiB with it
    grad_checkpointing=True)
train_dataloader = dict(
    batch_size=32,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='qv_scene_collate'),  # scenes have different numbers of crops: no transposition
    dataset=dict(type='QVSoIRPairDataset', ann_file='data/VoxDet-SoIR/anns.pt', sets=('OWID', ),
                 data_prefix='', crop_source='proposals',
                 proposals_file='work_dirs/owid_proposals/proposals.json', min_crop_size=224, max_crops=16))
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=5e-5, weight_decay=0.01))
# 5e-5 * 0.93^54 = 1.0e-6; the rate then stays there for the rest of the epoch
param_scheduler = dict(type='ExponentialLR', gamma=0.93, by_epoch=False, begin=0, end=54)
train_cfg = dict(by_epoch=True, max_epochs=1)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1), logger=dict(type='LoggerHook', interval=10))
custom_hooks = [dict(type='QVSaveLoRAAdapterHook', dirname='lora_adapter')]
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
randomness = dict(seed=0)
auto_scale_lr = dict(base_batch_size=128)
