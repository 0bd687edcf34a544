# Copyright (c) queryvision_mm contributors. All rights reserved.
"""Safe (``weights_only=True``) checkpoint loading for mmengine 0.10.x on torch >= 2.6.

Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``: only tensors, containers, primitive
types and explicitly allow-listed globals may be unpickled. mmengine 0.10.7 passes no ``weights_only``
and its checkpoints reference globals outside the default allow-list:

* ``mmengine.logging.history_buffer.HistoryBuffer`` (message-hub ``log_scalars``) and numpy
  (``multiarray._reconstruct``, ``ndarray``, ``dtype`` plus the numpy >= 1.25 ``numpy.dtypes.*DType``
  classes that ``BUILD`` restores, ``multiarray.scalar``);
* ``builtins.getattr``: ``HistoryBuffer.__getstate__`` copies the class-level ``_statistics_methods`` dict
  (``{'min': HistoryBuffer.min, ...}``) into every pickled instance, and a function with a dotted
  ``__qualname__`` pickles as ``getattr(HistoryBuffer, 'min')``. Allow-listing ``getattr`` would let a
  checkpoint fetch any attribute of any allow-listed object, so we do **not** do that.

:func:`setup_safe_checkpoint_loading` (idempotent). ``import queryvision_mm`` does **not** apply it; it is applied
explicitly: importing :mod:`queryvision_mm.safe_load` (whose only purpose that is; every shipped config lists it in
``custom_imports``, so mmdet's / mmpretrain's own ``tools/train.py`` get it too), ``tools/_bootstrap.py``'s
``import_queryvision_mm`` (all our tools), the inferencers and ``tests/conftest.py``. It:

1. patches ``HistoryBuffer.__getstate__``/``__setstate__`` so the pickled state is plain data
   (``max_length``, ``_log_history``, ``_count_history``); the statistics methods are not saved and are
   restored from the class on load (legacy states that still carry ``statistics_methods`` load too when
   full pickle is used);
2. allow-lists ``HistoryBuffer`` and the numpy globals above (under both ``numpy.core`` and
   ``numpy._core`` names so numpy-1 and numpy-2 pickles load) with ``torch.serialization.add_safe_globals``;
   safe loading stays on for everything else;
3. re-registers mmengine's local-file scheme (``''`` in :class:`mmengine.runner.checkpoint.CheckpointLoader`)
   with :func:`load_from_local_safe`, which calls ``torch.load(..., weights_only=True)`` explicitly and turns
   an ``UnpicklingError`` into :class:`UnsafeCheckpointError`, naming the file and the two ways out:
   ``tools/misc/convert_legacy_checkpoint.py`` or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (trusted files only).
"""
import logging
import os
import os.path as osp
import pickle
import re
import shlex
from typing import Any, Callable, List, Tuple, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner.checkpoint import CheckpointLoader

__all__ = [
    'UnsafeCheckpointError', 'setup_safe_checkpoint_loading', 'load_from_local_safe', 'safe_torch_load',
    'convert_legacy_checkpoint', 'checkpoint_safe_globals', 'OfficialCheckpointError', 'check_official_layout'
]

#: Environment variable honoured by torch and by :func:`safe_torch_load` to fall back to full pickle.
FORCE_UNSAFE_ENV = 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'
_TRUE_VALUES = ('1', 'y', 'yes', 'true')
_CONVERTER = 'tools/misc/convert_legacy_checkpoint.py'
# Key that mmengine's original ``HistoryBuffer.__getstate__`` adds to the state (and to the instance).
_LEGACY_STATE_KEY = 'statistics_methods'


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint could not be loaded with ``weights_only=True``.

    Subclasses :class:`pickle.UnpicklingError` so existing ``except`` clauses keep working.
    """


# ----------------------------------------------------------------------------------------------
# 1. HistoryBuffer: plain pickled state
# ----------------------------------------------------------------------------------------------
def _history_buffer_getstate(self: HistoryBuffer) -> dict:
    """Pickle only the data of a :class:`HistoryBuffer`.

    Unlike mmengine's version this neither stores the (class-level) statistics-method registry in the
    state nor mutates ``self.__dict__``.
    """
    state = self.__dict__.copy()
    state.pop(_LEGACY_STATE_KEY, None)  # left on instances by mmengine's original __getstate__
    state.pop('_statistics_methods', None)
    return state


def _history_buffer_setstate(self: HistoryBuffer, state: dict) -> None:
    """Restore a :class:`HistoryBuffer`; statistics methods come from the class registry.

    A legacy state (only loadable with full pickle) may still carry ``statistics_methods``; its entries
    are merged into the class registry without overriding methods registered in this process, which keeps
    mmengine's behaviour for custom methods registered with ``HistoryBuffer.register_statistics``.
    """
    state = dict(state)
    legacy_methods = state.pop(_LEGACY_STATE_KEY, None) or {}
    self._set_default_statistics()
    for name, method in legacy_methods.items():
        self._statistics_methods.setdefault(name, method)
    self.__dict__.update(state)


def _patch_history_buffer() -> None:
    if HistoryBuffer.__dict__.get('__getstate__') is not _history_buffer_getstate:
        HistoryBuffer.__getstate__ = _history_buffer_getstate
    if HistoryBuffer.__dict__.get('__setstate__') is not _history_buffer_setstate:
        HistoryBuffer.__setstate__ = _history_buffer_setstate


# ----------------------------------------------------------------------------------------------
# 2. Allow-list
# ----------------------------------------------------------------------------------------------
def _numpy_multiarray():
    try:  # numpy >= 2 (numpy.core is a deprecated alias there)
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    return multiarray


def _numpy_dtype_classes() -> List[type]:
    """Concrete dtype classes (``numpy.dtypes.Float64DType``...; ``numpy.dtype[float64]`` before 1.25).

    ``numpy.dtype(...)`` returns an instance of one of these, then ``BUILD`` calls its ``__setstate__``;
    the weights-only unpickler only allows ``BUILD`` on allow-listed types.
    """
    classes = set()
    dtypes_mod = getattr(np, 'dtypes', None)  # numpy >= 1.25
    if dtypes_mod is not None:
        for name in dir(dtypes_mod):
            obj = getattr(dtypes_mod, name)
            if isinstance(obj, type) and issubclass(obj, np.dtype) and obj is not np.dtype:
                classes.add(obj)
    for code in np.typecodes['All']:
        try:
            classes.add(type(np.dtype(code)))
        except TypeError:
            pass
    classes.discard(np.dtype)
    return sorted(classes, key=lambda c: f'{c.__module__}.{c.__qualname__}')


def checkpoint_safe_globals() -> List[Union[Callable, Tuple[Callable, str]]]:
    """Globals that mmengine checkpoints need beyond torch's default allow-list.

    ``builtins.getattr`` is deliberately absent (see the module docstring).
    """
    multiarray = _numpy_multiarray()
    safe: List[Union[Callable, Tuple[Callable, str]]] = [HistoryBuffer]
    for prefix in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        safe.append((multiarray._reconstruct, f'{prefix}._reconstruct'))
        safe.append((multiarray.scalar, f'{prefix}.scalar'))
    safe += [(np.ndarray, 'numpy.ndarray'), (np.dtype, 'numpy.dtype')]
    safe += _numpy_dtype_classes()
    return safe


# ----------------------------------------------------------------------------------------------
# 3. Loader
# ----------------------------------------------------------------------------------------------
def _force_unsafe_requested() -> bool:
    return os.environ.get(FORCE_UNSAFE_ENV, '0').strip().lower() in _TRUE_VALUES


def _unsafe_globals(filename: str) -> List[str]:
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(filename))
    except Exception:  # legacy (non-zip) format, TorchScript archive, old torch ...
        return []


def _unsafe_checkpoint_message(filename: str, err: BaseException) -> str:
    found = _unsafe_globals(filename)
    if not found:  # fall back to what the unpickler reported (torch strips the 'builtins.' prefix)
        found = re.findall(r'GLOBAL (\S+) was not an allowed global', str(err))
    legacy = any(g in ('builtins.getattr', 'getattr') for g in found)
    match = re.search(r'WeightsUnpickler error: ([^\n]*)', str(err))
    if match:
        detail = match.group(1).strip()
    else:
        detail = (str(err).strip().splitlines() or [repr(err)])[-1]
    stem, ext = osp.splitext(filename)
    lines = [
        f"Cannot load checkpoint '{filename}' with torch.load(weights_only=True)"
        + (f": it references globals that are not allow-listed: {', '.join(found)}." if found else '.')
    ]
    if legacy:
        lines.append(
            'This is a legacy mmengine checkpoint: its message-hub HistoryBuffers were pickled with their '
            'statistics methods (builtins.getattr), which safe loading refuses. Checkpoints saved with the '
            'safe-loading shim applied (`import queryvision_mm.safe_load`, our tools) do not have this problem.')
    lines += [
        'If (and only if) you trust this file, either',
        f'  * convert it once: python {_CONVERTER} {shlex.quote(filename)} {shlex.quote(stem + "_safe" + ext)}',
        f'  * or set {FORCE_UNSAFE_ENV}=1 for this run to load it with full pickle '
        '(unpickling an untrusted file can execute arbitrary code).',
    ]
    if not legacy:
        lines.append('Other globals can be allow-listed with torch.serialization.add_safe_globals([...]).')
    lines.append(f'Unpickler error: {detail}')
    return '\n'.join(lines)


def safe_torch_load(filename: str, map_location: Any = None) -> Any:
    """``torch.load(filename, map_location, weights_only=True)`` with a helpful error.

    With ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in the environment the file is loaded with full pickle
    (torch ignores that variable when ``weights_only`` is passed explicitly, so it is honoured here).

    Raises:
        UnsafeCheckpointError: the file needs globals that are not allow-listed.
    """
    if _force_unsafe_requested():
        print_log(
            f'{FORCE_UNSAFE_ENV} is set: loading {filename} with weights_only=False (full pickle). '
            'Do this only for trusted files.',
            logger='current',
            level=logging.WARNING)
        return torch.load(filename, map_location=map_location, weights_only=False)
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(_unsafe_checkpoint_message(filename, err)) from err


# Key layouts of the authors' releases that our models cannot load directly: (what, key pattern, converter).
OFFICIAL_LAYOUTS = (
    ('an official CQ-DINO checkpoint (RedAIGC/CQ-DINO: selector language_model.tagging_head.*, Swin patch merging '
     'in the original concat order)', re.compile(r'(?:^|\.)language_model\.(?:tagging_head\.|label_embed$)'),
     'tools/model_converters/cq_dino_to_qv.py'),
    ('an official Semi-DETR / DINODETR checkpoint (JCZ404/Semi-DETR, mmdet 2.x: DINO inside bbox_head)',
     re.compile(r'(?:^|\.)bbox_head\.(?:label_enc\.|fc_enc_cls\.|transformer\.tgt_embed\.)'),
     'tools/model_converters/semi_detr_to_qv.py'),
)


class OfficialCheckpointError(ValueError):
    """A checkpoint with the key layout of an authors' release: it must be converted first (the message names the
    converter). Loading it as is would leave most of our model at its initial values (mmengine's ``load_from`` is
    not strict)."""


def check_official_layout(checkpoint: Any, filename: str) -> None:
    """Raise :class:`OfficialCheckpointError` if ``checkpoint`` (a loaded file) has an official key layout."""
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        return
    for what, pattern, converter in OFFICIAL_LAYOUTS:
        key = next((k for k in state if isinstance(k, str) and pattern.search(k)), None)
        if key is not None:
            stem, ext = osp.splitext(filename)
            raise OfficialCheckpointError(
                f"'{filename}' is {what} (key '{key}'); our models use other module names, so it cannot be loaded "
                f'as is. Convert it once and load the converted file:\n'
                f'  python {converter} {shlex.quote(filename)} {shlex.quote(stem + "_qv" + (ext or ".pth"))}'
                ' [--config CONFIG]')


def load_from_local_safe(filename: str, map_location: Any = None) -> Any:
    """Drop-in for ``mmengine.runner.checkpoint.load_from_local`` (the ``''`` scheme) using
    :func:`safe_torch_load`. The name keeps mmengine's log line readable
    ("Loads checkpoint by local_safe backend"). An official CQ-DINO / Semi-DETR file (authors' key layout) raises
    :class:`OfficialCheckpointError` naming its converter (:func:`check_official_layout`)."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    checkpoint = safe_torch_load(filename, map_location=map_location)
    check_official_layout(checkpoint, filename)
    return checkpoint


def setup_safe_checkpoint_loading() -> bool:
    """Make mmengine checkpoints loadable with ``weights_only=True`` (idempotent).

    Safe loading is not disabled, and ``builtins.getattr`` is not allow-listed. Calling it again re-applies
    whatever is missing (e.g. after ``torch.serialization.clear_safe_globals()``) without duplicates.

    Returns:
        bool: False if this torch has no ``add_safe_globals`` (< 2.4); only the HistoryBuffer patch and the
        loader are applied then.
    """
    _patch_history_buffer()
    add_safe_globals = getattr(torch.serialization, 'add_safe_globals', None)
    if add_safe_globals is not None:
        present = set(torch.serialization.get_safe_globals())  # a set internally; avoid re-adding anyway
        missing = [g for g in checkpoint_safe_globals() if g not in present]
        if missing:
            add_safe_globals(missing)
    if CheckpointLoader._schemes.get('') is not load_from_local_safe:
        # the scheme registry (not a model registry) requires force=True to replace mmengine's loader
        CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_safe, force=True)
    return add_safe_globals is not None


# ----------------------------------------------------------------------------------------------
# Conversion of trusted legacy checkpoints
# ----------------------------------------------------------------------------------------------
def convert_legacy_checkpoint(src: str, dst: str, verify: bool = True) -> List[str]:
    """Re-save a **trusted** checkpoint so that it loads with ``weights_only=True``.

    ``src`` is read with ``weights_only=False`` (full pickle: it can execute code; never use it on files
    you do not trust). The HistoryBuffers are then re-pickled with the plain state of
    :func:`setup_safe_checkpoint_loading`. ``dst`` is written atomically (may equal ``src``).

    Args:
        src (str): legacy checkpoint.
        dst (str): output path.
        verify (bool): load the output with ``weights_only=True`` and refuse to write it if that fails
            (e.g. custom objects in ``meta``). Defaults to True.

    Returns:
        list[str]: globals in the output that are still not allow-listed (empty when ``verify`` passed).
    """
    setup_safe_checkpoint_loading()
    checkpoint = torch.load(osp.expanduser(src), map_location='cpu', weights_only=False)  # trusted input
    dst = osp.expanduser(dst)
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    tmp = f'{dst}.tmp{os.getpid()}'
    try:
        torch.save(checkpoint, tmp)
        remaining = _unsafe_globals(tmp)
        if verify:
            try:
                torch.load(tmp, map_location='cpu', weights_only=True, mmap=True)
            except pickle.UnpicklingError as err:
                raise UnsafeCheckpointError(
                    f"'{src}' was re-saved but still cannot be loaded with weights_only=True "
                    f"(not allow-listed: {', '.join(remaining) or 'see below'}); remove or convert those "
                    'objects, or allow-list them with torch.serialization.add_safe_globals.\n'
                    f'{err}') from err
        os.replace(tmp, dst)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return remaining
