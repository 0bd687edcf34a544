"""Activation checkpointing with ``torch.utils.checkpoint`` (non-reentrant) in place of fairscale's
``checkpoint_wrapper``, which mmdet's Grounding DINO encoder needs for ``num_cp > 0``.

As fairscale's wrapper, :func:`checkpoint_module` keeps the module itself (class, children, parameter names and
state-dict keys are unchanged, so checkpoints load with or without it); only its instance ``forward`` becomes a
checkpointed call of the class's ``forward`` while training with gradients enabled. Random state (dropout, drop
path) is replayed in the recomputation, so outputs and gradients equal the plain module's.
"""
import types

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    forward = type(self).forward
    if self.training and torch.is_grad_enabled():
        return checkpoint(forward, self, *args, use_reentrant=False, **kwargs)
    return forward(self, *args, **kwargs)


def checkpoint_module(module: nn.Module) -> nn.Module:
    """Checkpoint ``module``'s activations in training (in place; returns the module). A bound method, so that
    ``copy.deepcopy`` (e.g. an EMA teacher) rebinds it to the copy."""
    module.forward = types.MethodType(_checkpointed_forward, module)
    return module


def is_checkpointed(module: nn.Module) -> bool:
    """Whether :func:`checkpoint_module` was applied to ``module``."""
    return getattr(module.__dict__.get('forward'), '__func__', None) is _checkpointed_forward
