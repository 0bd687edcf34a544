# MaO-DINOv2, zero-shot (no stage A): facebook/dinov2-base (768-d, the README's best backbone; descriptor =
# pooler_output). Paper (authors' README): VoxDet mAP 70.20 (plain DINOv2 51.23).
#   python tools/mao/extract.py configs/mao/voxdet_dinov2_zeroshot.py
_base_ = '../_base_/mao_voxdet.py'

model = dict(encoder=dict(type='QVDINOv2CropEncoder', model_dir='checkpoints/dinov2-base', input_size=224),
             device='auto')   # every model on the GPU when there is one (--device on the tools overrides)
