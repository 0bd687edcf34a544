# Copyright (c) queryvision_mm contributors. All rights reserved.
"""Shared machinery of the official-checkpoint converters (``cq_dino_to_qv.py``, ``semi_detr_to_qv.py``).

A converter maps every key of an official checkpoint to our module names (its ``convert`` function), then
:func:`finalize` compares the result with the state dict of the model built from ``--config``:

* source keys no rule maps (``unmapped``), converted keys the model does not have (``unexpected``) and model keys
  nothing was converted to (``missing``) are errors, listed by name;
* ``--allow-unmapped PATTERN`` drops matching source / converted keys on purpose; ``--allow-missing PATTERN`` fills
  matching model keys with the config's freshly constructed (untrained) values, listed in ``meta['filled_keys']``;
* a shape mismatch is always an error (wrong config for this checkpoint).

The output therefore holds exactly the model's keys and loads with ``load_state_dict(strict=True)`` (and through
``load_from`` / ``tools/test.py``, which use mmengine's non-strict loading, with nothing left out). Patterns are
shell-style globs (``fnmatch``), e.g. ``'qrm.*'``.
"""
import fnmatch
import hashlib
import os
import os.path as osp
import sys
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOLS_DIR = osp.join(REPO_ROOT, 'tools')


class ConversionError(RuntimeError):
    """The official checkpoint does not map completely onto the target model."""


def _torch():
    import torch
    return torch


def format_keys(keys: Sequence[str], limit: int = 25) -> str:
    keys = list(keys)
    shown = '\n'.join(f'    {k}' for k in keys[:limit])
    more = f'\n    ... and {len(keys) - limit} more' if len(keys) > limit else ''
    return shown + more


def matches(key: str, patterns: Optional[Iterable[str]]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in (patterns or ()))


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def load_source(path: str) -> Tuple['OrderedDict[str, object]', dict]:
    """State dict and meta of a checkpoint (``{'state_dict': ...}`` as mmcv / mmengine save it, or a bare state dict),
    read with ``torch.load(weights_only=True)`` through our safe loader (a file that needs more: the error says how
    to proceed with a trusted file). A ``module.`` prefix on every key (DDP) is removed."""
    from queryvision_mm.utils.checkpoint import safe_torch_load
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    ckpt = safe_torch_load(path, map_location='cpu')
    torch = _torch()
    if isinstance(ckpt, dict) and isinstance(ckpt.get('state_dict'), dict):
        state, meta = ckpt['state_dict'], ckpt.get('meta') or {}
    elif isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state, meta = ckpt, {}
    else:
        raise ConversionError(f'{path}: neither a checkpoint with a "state_dict" nor a bare state dict '
                              f'(top-level keys: {sorted(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt)})')
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f'{path}: state_dict entries that are not tensors: {bad[:10]}')
    if state and all(k.startswith('module.') for k in state):
        state = OrderedDict((k[len('module.'):], v) for k, v in state.items())
    return OrderedDict(state), (meta if isinstance(meta, dict) else {})


def dataset_meta_from(meta: dict) -> Optional[dict]:
    """``dataset_meta`` (mmengine) or ``CLASSES`` (mmcv 1.x) of the source meta, as plain data (for mmdet's
    ``DetInferencer``, which reads the class names from ``meta['dataset_meta']``)."""
    ds = meta.get('dataset_meta')
    if isinstance(ds, dict) and isinstance(ds.get('classes'), (list, tuple)):
        return dict(classes=[str(c) for c in ds['classes']])
    classes = meta.get('CLASSES')
    if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
        return dict(classes=list(classes))
    return None


def build_target_state_dict(config: str, prepare: Callable = None,
                            cfg_options: Optional[dict] = None) -> 'OrderedDict[str, object]':
    """State dict of the model of ``config`` (constructed, no weights loaded; ``prepare(model_cfg)`` may drop side
    files that do not change the keys, e.g. class-embedding or tree files)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from mmdet.registry import MODELS
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model_cfg = cfg.model
    if prepare is not None:
        model_cfg = prepare(model_cfg)
    return MODELS.build(model_cfg).state_dict()


def finalize(converted: 'OrderedDict[str, object]', sources: Dict[str, str], unmapped: List[str],
             target: 'OrderedDict[str, object]', allow_missing: Sequence[str] = (),
             allow_unmapped: Sequence[str] = ()) -> Tuple['OrderedDict[str, object]', dict]:
    """Check ``converted`` (target key -> tensor; ``sources``: target key -> source key(s)) against ``target``.

    Returns:
        (state dict in the target's key order, report dict with ``dropped``, ``filled_keys``).

    Raises:
        ConversionError: unmapped / unexpected / missing keys not allowed by the patterns, or shape mismatches.
    """
    dropped = [k for k in unmapped if matches(k, allow_unmapped)]
    bad_unmapped = [k for k in unmapped if k not in dropped]
    unexpected, bad_unexpected = [], []
    for k in converted:
        if k in target:
            continue
        (unexpected if matches(k, allow_unmapped) or matches(sources.get(k, ''), allow_unmapped)
         else bad_unexpected).append(k)
    shapes = [f'{k}: converted {tuple(v.shape)} (from {sources.get(k, "?")}), model {tuple(target[k].shape)}'
              for k, v in converted.items() if k in target and tuple(v.shape) != tuple(target[k].shape)]
    missing = [k for k in target if k not in converted]
    filled = [k for k in missing if matches(k, allow_missing)]
    bad_missing = [k for k in missing if k not in filled]
    errors = []
    if bad_unmapped:
        errors.append(f'{len(bad_unmapped)} source keys that no rule maps (drop them on purpose with '
                      f'--allow-unmapped PATTERN):\n{format_keys(bad_unmapped)}')
    if bad_unexpected:
        errors.append(f'{len(bad_unexpected)} converted keys the model of --config does not have (another '
                      f'architecture? drop them on purpose with --allow-unmapped PATTERN):\n'
                      f'{format_keys([k + " (from " + sources.get(k, "?") + ")" for k in bad_unexpected])}')
    if bad_missing:
        errors.append(f'{len(bad_missing)} model keys that nothing in the checkpoint maps to (initialise them from '
                      f'the config on purpose with --allow-missing PATTERN):\n{format_keys(bad_missing)}')
    if shapes:
        errors.append(f'{len(shapes)} shape mismatches (is --config the architecture of this checkpoint?):\n'
                      f'{format_keys(shapes)}')
    if errors:
        raise ConversionError('the checkpoint does not map completely onto the model:\n' + '\n'.join(errors))
    out = OrderedDict()
    for k, v in target.items():
        out[k] = (converted[k] if k in converted else v).detach().clone().contiguous()
    return out, dict(dropped=dropped + unexpected, filled_keys=filled)


def save_checkpoint(out: str, state: 'OrderedDict[str, object]', meta: dict) -> None:
    """``{'state_dict', 'meta'}`` (tensors and plain data only), checked to load with ``weights_only=True``."""
    torch = _torch()
    out = osp.expanduser(out)
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    tmp = f'{out}.tmp{os.getpid()}'
    try:
        torch.save({'state_dict': state, 'meta': meta}, tmp)
        torch.load(tmp, map_location='cpu', weights_only=True)
        os.replace(tmp, out)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def write_converted(args, config: str, out: 'OrderedDict[str, object]', report: dict, notes: List[str],
                    src_meta: dict, official_repo: str, converter: str) -> int:
    """Save the converted state with its provenance ``meta`` (source file and hash, official repository, converter,
    target config and ``--cfg-options``, notes, dropped / filled keys, the source's ``dataset_meta``) and print the
    summary and the ``tools/test.py`` command for it. Returns the exit code 0."""
    meta = dict(converted_from=osp.basename(args.src), source_sha256=file_sha256(args.src),
                official_repo=official_repo, converter=converter,
                config=osp.relpath(config, REPO_ROOT) if osp.abspath(config).startswith(REPO_ROOT) else config,
                cfg_options=dict(args.cfg_options or {}), notes=notes, dropped=report['dropped'],
                filled_keys=report['filled_keys'])
    ds = dataset_meta_from(src_meta)
    if ds:
        meta['dataset_meta'] = ds
    save_checkpoint(args.out, out, meta)
    print(f'converted {args.src} -> {args.out}: {len(out)} tensors for {meta["config"]} '
          f'({len(report["filled_keys"])} filled from the config, {len(report["dropped"])} dropped)')
    for note in notes:
        print(f'  note: {note}')
    print(f'  evaluate with: {eval_command(meta["config"], args.out, args.cfg_options)}')
    return 0


def add_common_args(parser, default_config_help: str) -> None:
    parser.add_argument('src', help='official checkpoint (.pth)')
    parser.add_argument('out', help='output checkpoint for our model')
    parser.add_argument('--config', default=None, help=f'our config whose model the output must fit exactly '
                        f'(keys and shapes); default: {default_config_help}')
    parser.add_argument('--allow-missing', action='append', default=[], metavar='PATTERN',
                        help='model keys (glob) that may be absent from the checkpoint: written with the '
                        "config's freshly constructed values and listed in meta['filled_keys'] (repeatable)")
    parser.add_argument('--allow-unmapped', action='append', default=[], metavar='PATTERN',
                        help='source keys (or their converted names, glob) to drop on purpose (repeatable)')
    from mmengine.config import DictAction
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='overrides of --config (xxx=yyy) for the target model; pass the same ones to '
                        'tools/test.py / tools/train.py')


def eval_command(config: str, out: str, cfg_options: Optional[dict]) -> str:
    """The ``tools/test.py`` command for the converted file (with the converter's ``--cfg-options``)."""
    import shlex
    opts = ''
    if cfg_options:
        opts = ' --cfg-options ' + ' '.join(shlex.quote(f'{k}={v}') for k, v in cfg_options.items())
    return f'python tools/test.py {shlex.quote(config)} {shlex.quote(out)}{opts}'


def import_plugin() -> None:
    """``import queryvision_mm`` (repo root on ``sys.path`` if needed) and the safe checkpoint loading."""
    if TOOLS_DIR not in sys.path:
        sys.path.insert(0, TOOLS_DIR)
    from _bootstrap import import_queryvision_mm
    import_queryvision_mm()
