# Copyright (c) queryvision_mm contributors. All rights reserved.
"""Safe (weights_only=True) loading of mmengine checkpoints: queryvision_mm.utils.checkpoint."""
import argparse
import copy
import os.path as osp
import pickle
import subprocess
import sys
import textwrap
from collections import Counter, OrderedDict

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner.checkpoint import CheckpointLoader

from queryvision_mm.utils.checkpoint import (FORCE_UNSAFE_ENV, UnsafeCheckpointError, convert_legacy_checkpoint,
                                             load_from_local_safe, setup_safe_checkpoint_loading)

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONVERTER = osp.join(REPO_ROOT, 'tools', 'misc', 'convert_legacy_checkpoint.py')

# Written by a fresh interpreter that does NOT import queryvision_mm: mmengine's own HistoryBuffer pickling.
LEGACY_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance('legacy_writer')
    for v in (1.0, 3.0):
        hub.update_scalar('train/loss', v)
    hub.update_info('eta', np.float64(2.0))
    torch.save(dict(meta=dict(epoch=1, iter=2), state_dict={'w': torch.ones(2)},
                    message_hub=hub.state_dict()), sys.argv[1])
""")


def _global_names(safe_globals):
    names = set()
    for g in safe_globals:
        if isinstance(g, tuple):
            names.add(g[1])
        else:
            names.add(f'{getattr(g, "__module__", "")}.{getattr(g, "__qualname__", repr(g))}')
    return names


def _mmengine_like_checkpoint(hub_name):
    """A dict shaped like ``Runner.save_checkpoint``'s, with HistoryBuffers holding numpy values."""
    hub = MessageHub.get_instance(hub_name)
    for value in (1.0, np.float64(2.0), np.float32(4.5), torch.tensor(0.5)):
        hub.update_scalar('train/loss', value)
    hub.update_scalar('val/coco/bbox_mAP', np.float64(0.25))
    hub.update_info('eta', np.float64(12.5))
    hub.update_info('dataset_meta', dict(classes=('a', 'b'), palette=[(1, 2, 3), (4, 5, 6)]))
    return dict(
        meta=dict(
            epoch=2,
            iter=20,
            cfg="model = dict(type='QVDINO')",
            seed=0,
            mmengine_version='0.10.7',
            np_float=np.float32(0.5),
            np_int=np.int64(7),
            np_bool=np.bool_(True),
            np_array=np.arange(6, dtype=np.float32).reshape(2, 3),
            np_int_array=np.array([1, 2, 3], dtype=np.int64)),
        state_dict=OrderedDict(weight=torch.randn(2, 3), bias=torch.zeros(2)),
        message_hub=hub.state_dict(),
        optimizer=dict(state={0: dict(momentum_buffer=torch.ones(2, 3))}, param_groups=[dict(lr=0.01, params=[0, 1])]),
        param_schedulers=[dict(milestones=Counter({8: 1, 11: 1}), gamma=0.1, last_step=2)])


def _write_legacy_checkpoint(path):
    subprocess.run([sys.executable, '-c', LEGACY_WRITER, str(path)], check=True, cwd=str(osp.dirname(path)))
    assert 'builtins.getattr' in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))


class NotAllowListed:

    def __init__(self, value=1):
        self.value = value


@pytest.fixture(autouse=True)
def _safe_loading():
    setup_safe_checkpoint_loading()


def test_round_trip_weights_only(tmp_path):
    ckpt = _mmengine_like_checkpoint('test_round_trip')
    path = str(tmp_path / 'epoch_2.pth')
    torch.save(ckpt, path)

    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    loaded = torch.load(path, map_location='cpu', weights_only=True)

    assert torch.equal(loaded['state_dict']['weight'], ckpt['state_dict']['weight'])
    assert isinstance(loaded['state_dict'], OrderedDict)
    meta = loaded['meta']
    assert meta['np_float'] == np.float32(0.5) and meta['np_float'].dtype == np.float32
    assert meta['np_int'] == 7 and meta['np_bool']
    np.testing.assert_array_equal(meta['np_array'], ckpt['meta']['np_array'])
    assert meta['np_int_array'].dtype == np.int64
    assert loaded['param_schedulers'][0]['milestones'] == Counter({8: 1, 11: 1})

    buf = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buf, HistoryBuffer)
    assert set(buf.__dict__) == {'max_length', '_log_history', '_count_history'}
    assert buf.current() == 0.5 and buf.min() == 0.5 and buf.max() == 4.5
    assert buf.statistics('mean') == pytest.approx(2.0)

    hub = MessageHub.get_instance('test_round_trip_resumed')
    hub.load_state_dict(loaded['message_hub'])
    assert hub.get_scalar('val/coco/bbox_mAP').current() == 0.25
    assert hub.get_info('eta') == 12.5
    assert hub.get_info('dataset_meta')['classes'] == ('a', 'b')


def test_checkpoint_loader_uses_safe_local_loader(tmp_path):
    path = str(tmp_path / 'iter_20.pth')
    torch.save(_mmengine_like_checkpoint('test_loader'), path)
    assert CheckpointLoader._get_checkpoint_loader(path) is load_from_local_safe
    loaded = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    assert loaded['meta']['iter'] == 20
    with pytest.raises(FileNotFoundError):
        CheckpointLoader.load_checkpoint(str(tmp_path / 'missing.pth'))


def test_history_buffer_pickle_is_plain():
    buf = HistoryBuffer([1.0, 2.0], [1, 1])
    data = pickle.dumps(buf, protocol=2)
    assert b'getattr' not in data and b'statistics_methods' not in data
    assert 'statistics_methods' not in buf.__dict__  # mmengine's __getstate__ used to add it to the instance
    clone = pickle.loads(data)
    assert clone.mean() == 1.5 and clone.statistics('current') == 2.0
    deep = copy.deepcopy(buf)
    assert deep.statistics('max') == 2.0
    np.testing.assert_array_equal(deep.data[0], buf.data[0])


def test_numpy_1_pickle_names_load(tmp_path):
    """Checkpoints written under numpy 1.x name ``numpy.core.multiarray``; both spellings are allowed."""
    names = _global_names(torch.serialization.get_safe_globals())
    for prefix in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        assert {f'{prefix}._reconstruct', f'{prefix}.scalar'} <= names
    # The legacy (non-zip) torch format is a plain protocol-2 pickle stream, so a numpy-1 pickle can be made
    # by renaming the module in the GLOBAL opcodes (newline-terminated text, no length prefix).
    path = tmp_path / 'np1.pth'
    torch.save(dict(a=np.arange(3.0), s=np.float64(2.5)), str(path), _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    current = _numpy_multiarray_module().encode()
    assert current in data
    path.write_bytes(data.replace(current, b'numpy.core.multiarray'))
    loaded = torch.load(str(path), weights_only=True)
    np.testing.assert_array_equal(loaded['a'], np.arange(3.0))
    assert loaded['s'] == 2.5


def _numpy_multiarray_module():
    return 'numpy._core.multiarray' if int(np.__version__.split('.')[0]) >= 2 else 'numpy.core.multiarray'


def test_safe_loading_not_disabled_globally(tmp_path):
    names = _global_names(torch.serialization.get_safe_globals())
    assert 'builtins.getattr' not in names
    assert getattr not in [g[0] if isinstance(g, tuple) else g for g in torch.serialization.get_safe_globals()]

    for i, obj in enumerate([NotAllowListed(3), argparse.Namespace(a=1)]):
        path = str(tmp_path / f'bad{i}.pth')
        torch.save(dict(state_dict={'w': torch.ones(1)}, meta=dict(obj=obj)), path)
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=True)
        with pytest.raises(UnsafeCheckpointError) as excinfo:
            CheckpointLoader.load_checkpoint(path, map_location='cpu')
        message = str(excinfo.value)
        assert path in message
        assert type(obj).__qualname__ in message
        assert 'add_safe_globals' in message


def test_setup_is_idempotent():
    before = list(torch.serialization.get_safe_globals())
    setup_safe_checkpoint_loading()
    setup_safe_checkpoint_loading()
    after = list(torch.serialization.get_safe_globals())
    assert len(after) == len(before) and set(after) == set(before)
    assert CheckpointLoader._schemes[''] is load_from_local_safe
    assert list(CheckpointLoader._schemes).count('') == 1


def test_legacy_checkpoint_clear_error(tmp_path, monkeypatch):
    path = str(tmp_path / 'legacy.pth')
    _write_legacy_checkpoint(path)

    monkeypatch.delenv(FORCE_UNSAFE_ENV, raising=False)
    with pytest.raises(UnsafeCheckpointError) as excinfo:
        CheckpointLoader.load_checkpoint(path, map_location='cpu')
    message = str(excinfo.value)
    assert isinstance(excinfo.value, pickle.UnpicklingError)
    assert f"'{path}'" in message
    assert 'builtins.getattr' in message
    assert 'convert_legacy_checkpoint.py' in message
    assert f'{FORCE_UNSAFE_ENV}=1' in message and 'trust' in message

    # explicit opt-in for a trusted file
    monkeypatch.setenv(FORCE_UNSAFE_ENV, '1')
    loaded = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    assert loaded['message_hub']['log_scalars']['train/loss'].mean() == 2.0


def test_convert_legacy_checkpoint_function(tmp_path):
    src, dst = str(tmp_path / 'legacy.pth'), str(tmp_path / 'safe.pth')
    _write_legacy_checkpoint(src)
    assert convert_legacy_checkpoint(src, dst) == []
    assert torch.serialization.get_unsafe_globals_in_checkpoint(dst) == []
    loaded = CheckpointLoader.load_checkpoint(dst, map_location='cpu')
    buf = loaded['message_hub']['log_scalars']['train/loss']
    assert buf.mean() == 2.0 and 'statistics_methods' not in buf.__dict__
    assert torch.equal(loaded['state_dict']['w'], torch.ones(2))


def test_convert_refuses_unconvertible(tmp_path):
    src, dst = str(tmp_path / 'custom.pth'), str(tmp_path / 'out.pth')
    torch.save(dict(meta=dict(obj=NotAllowListed())), src)
    with pytest.raises(UnsafeCheckpointError, match='NotAllowListed'):
        convert_legacy_checkpoint(src, dst)
    assert not osp.exists(dst)
    assert convert_legacy_checkpoint(src, dst, verify=False) == [f'{__name__}.NotAllowListed']


def test_converter_cli(tmp_path):
    src, dst = str(tmp_path / 'legacy.pth'), str(tmp_path / 'converted' / 'safe.pth')
    _write_legacy_checkpoint(src)
    proc = subprocess.run([sys.executable, CONVERTER, src, dst], capture_output=True, text=True, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    loaded = torch.load(dst, map_location='cpu', weights_only=True)
    assert loaded['meta'] == dict(epoch=1, iter=2)
    assert loaded['message_hub']['log_scalars']['train/loss'].current() == 3.0
