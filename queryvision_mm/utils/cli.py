"""Shared steps of ``tools/train.py`` and ``tools/test.py`` (mmdet 3.3's tool logic)."""
import os.path as osp
from typing import Optional

from mmengine.config import Config


def default_work_dir(config: str) -> str:
    """``./work_dirs/<config folder>_<config name>``, e.g. ``work_dirs/sparse_semi_detr_coco_10pct`` for
    ``configs/sparse_semi_detr/coco_10pct.py``.

    mmdet's default (``work_dirs/<config name>``) gives configs of the same name in two folders one work dir, so
    ``--resume`` could continue the other folder's run (``semi_detr/coco_10pct.py`` and
    ``sparse_semi_detr/coco_10pct.py``). Derived from the file given on the command line, so a user's config that
    inherits ours gets its own work dir too.
    """
    folder = osp.basename(osp.dirname(osp.abspath(config)))
    name = osp.splitext(osp.basename(config))[0]
    return osp.join('./work_dirs', f'{folder}_{name}' if folder else name)


def load_tool_config(config: str, cfg_options: Optional[dict], launcher: str, work_dir: Optional[str]) -> Config:
    """Read the config, apply ``--cfg-options`` and the launcher, and resolve the work dir
    (CLI > config > :func:`default_work_dir`). Also limits torch.compile's recompilations as mmdet does."""
    from mmdet.utils import setup_cache_size_limit_of_dynamo
    setup_cache_size_limit_of_dynamo()
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = default_work_dir(config)
    return cfg


def config_scope(cfg: Config) -> str:
    """The OpenMMLab scope a config builds its modules in: its ``default_scope`` (``'mmpretrain'`` for QKS / MaO),
    else ``'mmdet'`` (the detection configs)."""
    return cfg.get('default_scope', None) or 'mmdet'


def enable_auto_scale_lr(cfg: Config) -> Config:
    """``--auto-scale-lr`` for both scopes: mmdet configs carry ``auto_scale_lr = dict(enable=False,
    base_batch_size=N)``, mmpretrain configs ``dict(base_batch_size=N)`` (mmpretrain's ``tools/train.py`` adds
    ``enable=True`` likewise). mmengine's ``Runner.scale_lr`` then multiplies every parameter group's learning rate
    by ``world_size * train_dataloader.batch_size / base_batch_size``."""
    auto_scale_lr = cfg.get('auto_scale_lr', None)
    if not auto_scale_lr or 'base_batch_size' not in auto_scale_lr:
        raise RuntimeError('--auto-scale-lr: the config has no "auto_scale_lr.base_batch_size" (the total batch size '
                           'its learning rate was set for)')
    cfg.auto_scale_lr.enable = True
    return cfg


def enable_visualization(cfg: Config, show: bool, show_dir: Optional[str], wait_time: float,
                         interval: int = 1) -> Config:
    """``--show`` / ``--show-dir`` of ``tools/test.py`` for both scopes.

    mmdet configs: mmdet's ``trigger_visualization_hook`` (``DetVisualizationHook``: ``draw``, ``test_out_dir``).
    mmpretrain configs: its ``VisualizationHook`` draws nothing unless ``enable=True`` and writes to ``out_dir``;
    it is enabled here with ``interval`` (every N-th test sample, as mmpretrain's ``tools/test.py --interval``).
    :func:`resolve_show_dir` then puts its pictures where mmdet's go (``WORK_DIR/<timestamp>/SHOW_DIR``).
    """
    hooks = cfg.get('default_hooks', None) or {}
    if 'visualization' not in hooks:
        raise RuntimeError('--show / --show-dir: the config has no default_hooks.visualization (mmdet: '
                           'DetVisualizationHook, mmpretrain: VisualizationHook)')
    if config_scope(cfg) != 'mmpretrain':
        from argparse import Namespace

        from mmdet.engine.hooks.utils import trigger_visualization_hook
        return trigger_visualization_hook(cfg, Namespace(show=show, show_dir=show_dir, wait_time=wait_time))
    hook = cfg.default_hooks.visualization
    hook.update(enable=True, show=show, wait_time=wait_time, interval=interval)
    if show_dir:
        hook.out_dir = show_dir
    return cfg


def resolve_show_dir(runner, show_dir: Optional[str]) -> None:
    """mmpretrain's ``VisualizationHook`` writes to ``out_dir`` as given (relative to the current directory); mmdet's
    joins ``work_dir/<timestamp>/``. Give the built runner's mmpretrain hook mmdet's layout, so that ``--show-dir``
    means the same for every config (an absolute ``show_dir`` is used as is by both)."""
    if not show_dir:
        return
    from mmpretrain.engine.hooks import VisualizationHook
    for hook in runner.hooks:
        if isinstance(hook, VisualizationHook):
            hook.out_dir = osp.join(runner.work_dir, runner.timestamp, show_dir)


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
