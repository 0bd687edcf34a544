"""Importing this module applies the safe checkpoint-loading shim; that is its whole purpose.

The shim itself (what it changes and why: ``torch.load(weights_only=True)`` for mmengine 0.10.7 checkpoints on
torch >= 2.6) is :func:`queryvision_mm.utils.checkpoint.setup_safe_checkpoint_loading`, documented in
:mod:`queryvision_mm.utils.checkpoint`. ``import queryvision_mm`` does not apply it; it is applied explicitly:

* by configs, so that any ``tools/train.py`` (ours, mmdet's, mmpretrain's) gets it::

      custom_imports = dict(imports=['queryvision_mm', 'queryvision_mm.safe_load'], allow_failed_imports=False)

* by our tools (``tools/_bootstrap.py: import_queryvision_mm``), inferencers and ``tests/conftest.py``, which call
  ``setup_safe_checkpoint_loading()`` (idempotent).
"""
from .utils.checkpoint import setup_safe_checkpoint_loading

setup_safe_checkpoint_loading()

__all__ = ['setup_safe_checkpoint_loading']
