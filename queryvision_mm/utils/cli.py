"""Shared steps of ``tools/train.py`` and ``tools/test.py`` (mmdet 3.3's tool logic)."""
import os.path as osp
from typing import Optional

from mmengine.config import Config


def load_tool_config(config: str, cfg_options: Optional[dict], launcher: str, work_dir: Optional[str]) -> Config:
    """Read the config, apply ``--cfg-options`` and the launcher, and resolve the work dir
    (CLI > config > ``./work_dirs/<config stem>``). Also limits torch.compile's recompilations as mmdet does."""
    from mmdet.utils import setup_cache_size_limit_of_dynamo
    setup_cache_size_limit_of_dynamo()
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    return cfg


def build_runner(cfg: Config):
    """Set up CPU-only distributed runs if needed (gloo, before the Runner exists), then build the Runner
    (``RUNNERS.build`` when the config names a ``runner_type``)."""
    from mmdet.registry import RUNNERS
    from mmengine.runner import Runner

    from .dist import setup_cpu_distributed
    setup_cpu_distributed(cfg, cfg.launcher)
    return RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)


def shutdown_distributed() -> None:
    """Destroy the default process group at the end of a tool run (the caller ``del``s its runner first).

    mmengine leaves both to interpreter exit, where gloo's worker threads can still hold work objects with tensors
    (the DDP wrapper keeps the process group alive); destroying those during interpreter finalisation aborts a rank
    ("terminate called without an active exception") after the work is done. Dropping the runner first and then the
    group lets everything be torn down while the interpreter is still alive.
    """
    import gc

    import torch.distributed as dist
    gc.collect()   # the runner the caller dropped (DDP wrapper, dataloaders) goes now
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        gc.collect()
