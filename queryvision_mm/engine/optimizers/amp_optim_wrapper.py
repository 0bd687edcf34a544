"""``QVAmpOptimWrapper``: mmengine's ``AmpOptimWrapper`` (what ``tools/train.py --amp`` selects) that also runs on
CPU-only machines, where mmengine's asserts a GPU.

* On a CUDA / NPU / MLU / MUSA machine it *is* ``AmpOptimWrapper`` (fp16 autocast + ``GradScaler`` with the given
  ``loss_scale``; ``dtype='bfloat16'`` for bf16), nothing overridden.
* On CPU: bf16 autocast around the forward (``optim_context``) and plain fp32 backward / step, no ``GradScaler``
  (bf16 has fp32's exponent range, so losses need no scaling; a ``loss_scale`` is accepted and ignored). Checkpoints
  carry no ``loss_scaler`` entry there; one written on a GPU loads (the entry is skipped).
"""
from contextlib import contextmanager
from typing import Union

import torch
from mmengine.device import is_cuda_available, is_mlu_available, is_musa_available, is_npu_available
from mmengine.logging import print_log
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from torch import nn


def _accelerator_available() -> bool:
    return is_cuda_available() or is_npu_available() or is_mlu_available() or is_musa_available()


# mmengine's root registry, so that configs of every scope (mmdet, mmpretrain) find it
@OPTIM_WRAPPERS.register_module()
class QVAmpOptimWrapper(AmpOptimWrapper):
    """``AmpOptimWrapper`` with a CPU path (bf16 autocast, no loss scaling). Arguments as ``AmpOptimWrapper``."""

    def __init__(self,
                 loss_scale: Union[str, float, dict] = 'dynamic',
                 dtype: Union[str, torch.dtype, None] = None,
                 use_fsdp: bool = False,
                 **kwargs) -> None:
        self.on_cpu = not _accelerator_available()
        if not self.on_cpu:
            super().__init__(loss_scale=loss_scale, dtype=dtype, use_fsdp=use_fsdp, **kwargs)
            return
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None)
        if dtype not in (None, torch.bfloat16):
            raise ValueError(f'QVAmpOptimWrapper: CPU autocast runs in bfloat16 only, got dtype={dtype}')
        OptimWrapper.__init__(self, **kwargs)
        self._scale_update_param = None
        self.loss_scaler = None
        self.cast_dtype = torch.bfloat16
        print_log('QVAmpOptimWrapper: no GPU, mixed precision = bf16 autocast on CPU without loss scaling',
                  logger='current')

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        if self.on_cpu:
            return OptimWrapper.backward(self, loss, **kwargs)
        return super().backward(loss, **kwargs)

    def step(self, **kwargs) -> None:
        if self.on_cpu:
            return OptimWrapper.step(self, **kwargs)
        return super().step(**kwargs)

    def state_dict(self) -> dict:
        if self.on_cpu:
            return OptimWrapper.state_dict(self)
        return super().state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        if self.on_cpu:
            state_dict.pop('loss_scaler', None)
            return OptimWrapper.load_state_dict(self, state_dict)
        return super().load_state_dict(state_dict)

    @contextmanager
    def optim_context(self, model: nn.Module):
        if not self.on_cpu:
            with super().optim_context(model):
                yield
            return
        with OptimWrapper.optim_context(self, model), torch.autocast('cpu', dtype=torch.bfloat16):
            yield
