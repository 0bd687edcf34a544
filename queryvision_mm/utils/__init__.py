# Copyright (c) queryvision_mm contributors. All rights reserved.
"""Runtime shims for the mmengine 0.10.7 / torch >= 2.6 stack.

Importing this subpackage applies :func:`setup_safe_checkpoint_loading` (idempotent), so
``import queryvision_mm`` applies it as long as the package imports ``.utils``.
"""
from .checkpoint import UnsafeCheckpointError, convert_legacy_checkpoint, setup_safe_checkpoint_loading
from .dist import setup_cpu_distributed

setup_safe_checkpoint_loading()

__all__ = [
    'setup_safe_checkpoint_loading', 'setup_cpu_distributed', 'convert_legacy_checkpoint',
    'UnsafeCheckpointError'
]
