# Copyright (c) queryvision_mm contributors. All rights reserved.
"""CPU multi-process (gloo) training/testing with mmengine 0.10.7's ``pytorch`` launcher.

mmengine 0.10.7 cannot run ``--launcher pytorch`` without CUDA:

* ``mmengine.dist.init_dist('pytorch')`` calls ``torch.cuda.set_device(local_rank)`` unconditionally
  ("Found no NVIDIA driver") and defaults to the ``nccl`` backend;
* ``Runner.wrap_model`` passes ``device_ids=[LOCAL_RANK]`` to DDP, which DDP rejects for CPU modules.

:func:`setup_cpu_distributed` initialises ``torch.distributed`` with ``gloo`` from the torchrun
environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) *before* the Runner is built (the
Runner only calls ``init_dist`` when no process group exists) and rewrites the config so that the Runner
agrees: ``env_cfg.dist_cfg.backend='gloo'`` and a DDP wrapper with ``device_ids=None``.
"""
import datetime
import os
from typing import Any, MutableMapping

import torch
import torch.distributed as torch_dist

__all__ = ['setup_cpu_distributed']

_REQUIRED_ENV = ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
_DDP_WRAPPER = 'MMDistributedDataParallel'


def _is_ddp_wrapper(wrapper_type: Any) -> bool:
    """Whether a ``model_wrapper_cfg.type`` names a ``DistributedDataParallel`` subclass.

    For those, mmengine injects ``device_ids=[LOCAL_RANK]`` unless the config sets ``device_ids``.
    """
    from torch.nn.parallel import DistributedDataParallel
    if isinstance(wrapper_type, str):
        from mmengine.registry import MODEL_WRAPPERS
        try:
            wrapper_type = MODEL_WRAPPERS.get(wrapper_type)
        except Exception:  # unknown scope etc.: leave the user's wrapper alone
            return False
    return isinstance(wrapper_type, type) and issubclass(wrapper_type, DistributedDataParallel)


def _model_wrapper_cfg(cfg: MutableMapping) -> dict:
    wrapper = cfg.get('model_wrapper_cfg', None)
    if wrapper is None:
        # mmengine's default wrapper on GPU, minus the CUDA device ids
        return dict(
            type=_DDP_WRAPPER,
            device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper = dict(wrapper)  # the user's wrapper: keep its type and keys
    wrapper.setdefault('type', _DDP_WRAPPER)
    if 'device_ids' not in wrapper and _is_ddp_wrapper(wrapper['type']):
        wrapper['device_ids'] = None
    return wrapper


def setup_cpu_distributed(cfg: MutableMapping, launcher: str) -> bool:
    """Set up CPU (gloo) distributed training for mmengine's ``pytorch`` launcher.

    Does nothing unless ``launcher == 'pytorch'`` and CUDA is unavailable (set ``CUDA_VISIBLE_DEVICES=''``
    to force CPU on a GPU machine). Otherwise, before ``Runner.from_cfg(cfg)``:

    * ``cfg.env_cfg.dist_cfg.backend = 'gloo'`` (other ``dist_cfg`` keys, e.g. ``timeout``, are kept);
    * ``cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None,
      broadcast_buffers=False, find_unused_parameters=cfg.find_unused_parameters or False)`` (mmengine's
      GPU default without device ids) if the config sets no wrapper; a user wrapper is kept as is, with
      ``device_ids=None`` added when it is a DDP subclass without ``device_ids``;
    * ``torch.distributed.init_process_group('gloo', init_method='env://')`` with ``RANK``/``WORLD_SIZE``
      from the environment (torchrun sets them, and ``MASTER_ADDR``/``MASTER_PORT``) unless a process group
      already exists.

    Args:
        cfg (Config | dict): the full config; modified in place.
        launcher (str): the ``--launcher`` argument.

    Returns:
        bool: True if the CPU/gloo path is in use.
    """
    if launcher != 'pytorch' or torch.cuda.is_available():
        return False

    env_cfg = dict(cfg.get('env_cfg', None) or {})
    dist_cfg = dict(env_cfg.get('dist_cfg', None) or {})
    init_backend = dist_cfg.get('init_backend', 'torch')
    if init_backend != 'torch':
        raise RuntimeError(f"CPU distributed runs support env_cfg.dist_cfg.init_backend='torch' only, got "
                           f'{init_backend!r}.')
    dist_cfg['backend'] = 'gloo'
    env_cfg['dist_cfg'] = dist_cfg
    cfg['env_cfg'] = env_cfg
    cfg['model_wrapper_cfg'] = _model_wrapper_cfg(cfg)

    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        missing = [k for k in _REQUIRED_ENV if k not in os.environ]
        if missing:
            raise RuntimeError(f"--launcher pytorch needs the torchrun environment; missing {', '.join(missing)}. "
                               'Start with tools/dist_train.sh / tools/dist_test.sh or torchrun.')
        kwargs = {k: v for k, v in dist_cfg.items() if k not in ('backend', 'init_backend')}
        if kwargs.get('timeout') is not None and not isinstance(kwargs['timeout'], datetime.timedelta):
            kwargs['timeout'] = datetime.timedelta(seconds=kwargs['timeout'])  # as mmengine.dist.init_dist
        torch_dist.init_process_group(
            backend='gloo',
            init_method='env://',
            rank=int(os.environ['RANK']),
            world_size=int(os.environ['WORLD_SIZE']),
            **kwargs)
    return True
