# MaO demo on a tiny small-object gallery built from real photos shipped by installed packages
# (queryvision_mm/testing/demo_data/demo_photos.py: 12 gallery photos with a gift box, a coffee cup and a cat's head
# pasted at 26-40 px, 6 queries). No OWLv2 / SAM / CLIP weights can be downloaded here, so the three models are random
# stand-ins of the real classes (data/demo_mao/{owlv2_random,sam_random.pth,clip_random}) loaded through the real
# loaders: the demo runs extract -> stage B -> index -> search end to end; its mAP is not meaningful.
#   bash tools/run_demo.sh configs/mao/demo_photos.py
_base_ = '../_base_/mao_voxdet.py'

data_root = 'data/demo_mao/'
model = dict(
    encoder=dict(type='QVOpenCLIPCropEncoder', model_name='local-dir:' + data_root + 'clip_random'),
    proposals=dict(model_dir=data_root + 'owlv2_random', max_objects=8),
    masks=dict(checkpoint=data_root + 'sam_random.pth', model_type='custom',
               arch=dict(img_size=256, patch_size=16, embed_dim=64, depth=2, num_heads=2, prompt_dim=32, mlp_dim=64,
                         decoder_depth=1, decoder_heads=2)),
    refine=dict(iters=20),
    device='cpu')   # tiny stand-ins: reproducible on the CPU (tools/mao/*.py --device cuda to try a GPU)
dataset = dict(ann_file=data_root + 'annotations/anns.json', sets=('demo', ), data_prefix=data_root)
index = dict(use_gpu=False)
evaluation = dict(topk=(1, 3, 5))
work_dir = 'work_dirs/mao_demo_photos'
