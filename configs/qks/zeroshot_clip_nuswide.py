# Zero-shot CLIP ViT-B/16 on NUS-WIDE with the QKS metric (the baseline of QKS/MKT: CLS token through CLIP's
# projection, cosine similarity with the single-template label embedding "There is a {} in the scene"). Nothing to
# train: python tools/test.py configs/qks/zeroshot_clip_nuswide.py none   (no checkpoint needed; see README)
#   python tools/misc/make_category_embeddings.py data/nuswide/labels_seen.txt data/nuswide/labels_unseen.txt \
#       data/nuswide/label_embeddings_scene.safetensors --model ViT-B-16-quickgelu \
#       --pretrained checkpoints/clip_vit_b16_openai.bin --templates scene
_base_ = './nuswide_vitb16.py'

model = dict(
    neck=None,
    head=dict(_delete_=True, type='QVCLIPZeroShotHead', embed_file='data/nuswide/label_embeddings_scene.safetensors',
              num_seen=925, logit_scale=100.0))
train_dataloader = None
train_cfg = None
val_dataloader = None
val_cfg = None
val_evaluator = None
optim_wrapper = None
param_scheduler = None
# every parameter is frozen, and PyTorch's DDP refuses such a model ("DistributedDataParallel is not needed when a
# module doesn't have any parameter that requires a gradient"), so `tools/dist_test.sh ... none N` failed for N >= 2;
# mmengine's separate wrapper leaves modules without trainable parameters unwrapped on the device
model_wrapper_cfg = dict(type='MMSeparateDistributedDataParallel', broadcast_buffers=False,
                         find_unused_parameters=False)
