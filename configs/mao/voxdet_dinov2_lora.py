# MaO-DINOv2 fine-tuned: stage A (LoRA on DINOv2-base query/key/value, rank 256, alpha 32, dropout 0.1; InfoNCE
# between the mean of a scene's object-crop embeddings and the query-object embedding, negatives = the queries of
# all GPUs, same-instance false negatives masked; AdamW 5e-5 decayed exponentially to 1e-6 over all iterations;
# batch 128 = 4 GPUs x 32; one epoch on the VoxDet (OWID) training scenes; bf16 autocast, GradCache micro-batches
# of 64 crops + block checkpointing), then the zero-shot pipeline (stage B on the adapted encoder). Paper (authors'
# README): VoxDet mAP 83.70.
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
    refine={{_base_.model.refine}},
    device='auto')
model = dict(
    _delete_=True,
    type='QVMaOContrastiveModel',
    encoder=dict(type='QVDINOv2CropEncoder', model_dir=dinov2_dir, input_size=224),
    lora=dict(r=256, lora_alpha=32, lora_dropout=0.1, target_modules=['query', 'key', 'value']),
    temperature=0.07,
    # a step back-propagates through every crop of 32 scenes (up to max_crops=16 each) + their 32 queries, <= 544
    # DINOv2-B passes per GPU: GradCache encodes them without gradients, then re-encodes 64 at a time with gradients
    # (activation memory of 64 crops, whatever the batch), each block recomputed (checkpointing); README "MaO" has
    # the measured memory per crop and the estimate (well under 80 GB)
    grad_checkpointing=True,
    micro_batch_size=64,
    gather_negatives=True)
train_dataloader = dict(
    batch_size=32,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='qv_scene_collate'),  # scenes have different numbers of crops: no transposition
    dataset=dict(type='QVSoIRPairDataset', ann_file='data/VoxDet-SoIR/anns.pt', sets=('OWID', ),
                 data_prefix='', crop_source='proposals',
                 proposals_file='work_dirs/owid_proposals/proposals.json', min_crop_size=224, max_crops=16))
# mixed precision: mmengine's AmpOptimWrapper on a GPU (bf16 autocast; dynamic loss scale), bf16 autocast on CPU
optim_wrapper = dict(type='QVAmpOptimWrapper', dtype='bfloat16',
                     optimizer=dict(type='AdamW', lr=5e-5, weight_decay=0.01))
# 5e-5 -> 1e-6 exponentially over the real number of iterations (known when the dataloader exists: epoch_length =
# scenes / (32 x GPUs), ~430 on OWID with 4 GPUs): gamma = (1e-6 / 5e-5) ** (1 / (iterations - 1)), i.e. 0.9909
# for 430; the last iteration runs at 1e-6 (the former ExponentialLR(gamma=0.93, end=54) hit 1e-6 after 54)
param_scheduler = dict(type='QVExponentialDecayLR', eta_end=1e-6, by_epoch=True, convert_to_iter_based=True,
                       begin=0, end=1)
train_cfg = dict(by_epoch=True, max_epochs=1)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1), logger=dict(type='LoggerHook', interval=10))
custom_hooks = [dict(type='QVSaveLoRAAdapterHook', dirname='lora_adapter')]
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
randomness = dict(seed=0)
auto_scale_lr = dict(base_batch_size=128)
