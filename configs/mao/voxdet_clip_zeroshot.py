# MaO-CLIP, zero-shot (no stage A): OpenAI CLIP ViT-B/16 (512-d). Paper (authors' README): VoxDet mAP 65.22 (plain
# CLIP 44.52). Weights: open_clip_pytorch_model.bin of timm/vit_base_patch16_clip_224.openai, copied locally.
#   python tools/mao/extract.py configs/mao/voxdet_clip_zeroshot.py
#   python tools/mao/search.py configs/mao/voxdet_clip_zeroshot.py QUERY.jpg --box X0 Y0 X1 Y1
_base_ = '../_base_/mao_voxdet.py'

model = dict(encoder=dict(type='QVOpenCLIPCropEncoder', model_name='ViT-B-16-quickgelu',
                          pretrained='checkpoints/clip_vit_b16_openai.bin'),
             device='auto')   # every model on the GPU when there is one (--device on the tools overrides)
