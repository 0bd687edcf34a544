# Copyright (c) queryvision_mm contributors. All rights reserved.
"""Runtime shims for the mmengine 0.10.7 / torch >= 2.6 stack.

Importing this subpackage changes nothing: :func:`setup_safe_checkpoint_loading` (documented in
:mod:`.checkpoint`) is applied explicitly, by ``import queryvision_mm.safe_load`` (configs' ``custom_imports``) or a
call (tools, inferencers, tests).
"""
from .checkpoint import UnsafeCheckpointError, convert_legacy_checkpoint, setup_safe_checkpoint_loading
from .dist import setup_cpu_distributed

__all__ = [
    'setup_safe_checkpoint_loading', 'setup_cpu_distributed', 'convert_legacy_checkpoint',
    'UnsafeCheckpointError'
]
