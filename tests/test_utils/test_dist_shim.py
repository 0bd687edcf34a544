# Copyright (c) queryvision_mm contributors. All rights reserved.
"""CPU (gloo) distributed shim: queryvision_mm.utils.dist.setup_cpu_distributed."""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import MODEL_WRAPPERS
from torch.nn.parallel import DistributedDataParallel

from queryvision_mm.utils.dist import setup_cpu_distributed


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def torchrun_env(monkeypatch):
    """Single-process torchrun environment on a CPU-only view of the machine."""
    assert not dist.is_initialized()
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    for key, value in dict(
            MASTER_ADDR='127.0.0.1', MASTER_PORT=str(_free_port()), RANK='0', WORLD_SIZE='1',
            LOCAL_RANK='0').items():
        monkeypatch.setenv(key, value)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def _cfg(**extra):
    return Config(dict(env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend='nccl', timeout=600)), **extra))


def test_launcher_none_is_noop():
    cfg = _cfg()
    assert setup_cpu_distributed(cfg, 'none') is False
    assert cfg.env_cfg.dist_cfg.backend == 'nccl'
    assert 'model_wrapper_cfg' not in cfg
    assert not dist.is_initialized()


def test_noop_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = _cfg()
    assert setup_cpu_distributed(cfg, 'pytorch') is False
    assert cfg.env_cfg.dist_cfg.backend == 'nccl' and 'model_wrapper_cfg' not in cfg
    assert not dist.is_initialized()


def test_pytorch_launcher_initialises_gloo(torchrun_env):
    cfg = _cfg(find_unused_parameters=True)
    assert setup_cpu_distributed(cfg, 'pytorch') is True

    assert dist.is_initialized()
    assert dist.get_backend() == 'gloo'
    assert (dist.get_rank(), dist.get_world_size()) == (0, 1)
    t = torch.ones(2)
    dist.all_reduce(t)
    assert t.tolist() == [1.0, 1.0]

    assert cfg.env_cfg.dist_cfg.to_dict() == dict(backend='gloo', timeout=600)
    assert cfg.env_cfg.cudnn_benchmark is False
    assert cfg.model_wrapper_cfg.to_dict() == dict(
        type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False, find_unused_parameters=True)

    # what Runner.wrap_model does with it: DDP accepts the CPU module
    wrapped = MODEL_WRAPPERS.build(cfg.model_wrapper_cfg, default_args=dict(module=nn.Linear(2, 1)))
    assert isinstance(wrapped, DistributedDataParallel) and wrapped.device_ids is None

    # a second call (e.g. test after train in one process) keeps the group and the config
    assert setup_cpu_distributed(cfg, 'pytorch') is True
    assert dist.get_backend() == 'gloo'
    assert cfg.model_wrapper_cfg.device_ids is None


def test_user_wrapper_is_kept(torchrun_env):
    cfg = _cfg(model_wrapper_cfg=dict(type='MMDistributedDataParallel', broadcast_buffers=True, static_graph=True))
    assert setup_cpu_distributed(cfg, 'pytorch') is True
    assert cfg.model_wrapper_cfg.to_dict() == dict(
        type='MMDistributedDataParallel', broadcast_buffers=True, static_graph=True, device_ids=None)


def test_user_wrappers_get_device_ids_only_if_ddp(torchrun_env):
    # MMSeparateDistributedDataParallel subclasses DDP: mmengine would inject device_ids=[LOCAL_RANK]
    separate = dict(type='MMSeparateDistributedDataParallel', find_unused_parameters=True)
    cfg = _cfg(model_wrapper_cfg=separate)
    assert setup_cpu_distributed(cfg, 'pytorch') is True
    assert cfg.model_wrapper_cfg.to_dict() == dict(separate, device_ids=None)
    # not a DDP subclass (FSDP), or device_ids set by the user: untouched
    for wrapper in (dict(type='MMFullyShardedDataParallel', use_orig_params=True),
                    dict(type='MMDistributedDataParallel', device_ids=[0])):
        cfg = _cfg(model_wrapper_cfg=wrapper)
        assert setup_cpu_distributed(cfg, 'pytorch') is True
        assert cfg.model_wrapper_cfg.to_dict() == wrapper


def test_missing_torchrun_env(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    for key in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match='torchrun'):
        setup_cpu_distributed(_cfg(), 'pytorch')
    assert not dist.is_initialized()
