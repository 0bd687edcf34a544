"""MaO gallery extraction at scale (issue 14, item 2): the sharded cache layout (and the old flat one refused), a
fingerprint that covers the weights' contents (a retrained LoRA adapter at the same path does not reuse stale
descriptors; digests cached per file), ``--device cuda`` without CUDA is a clear error, and ``tools/mao/extract.py
--launcher pytorch`` in 2 processes (torchrun's environment, gloo on CPU) resumes a partly filled cache shard by
shard and gives the same descriptors and rankings as one process, on the photo demo set with tiny models."""
import json
import os
import os.path as osp
import socket

import numpy as np
import pytest
import torch
from mmengine.config import Config

from conftest import REPO, load_module_from_path
from test_mao_pipeline import SAM_ARCH, models  # noqa: F401  (module fixture)
from test_mao_tools import tiny_gallery

DEFAULT_SCOPE = 'mmpretrain'


@pytest.fixture(autouse=True)
def digest_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('QV_DIGEST_CACHE', str(tmp_path / 'digests.json'))


def tiny_cfg(models, data_root, **refine):  # noqa: F811
    mroot, clip = models
    cfg = Config.fromfile(osp.join(REPO, 'configs/mao/demo_photos.py'))
    cfg.model.encoder.model_name = clip
    cfg.model.proposals.update(model_dir=str(mroot / 'owlv2'), max_objects=2)
    cfg.model.masks.update(checkpoint=str(mroot / 'sam.pth'), arch=SAM_ARCH)
    cfg.model.refine = dict(cfg.model.refine, iters=2, **refine)
    cfg.dataset.update(ann_file=str(data_root / 'anns.json'), sets=None, data_prefix=str(data_root))
    return cfg


def test_sharded_layout_and_old_flat_cache_refused(models, tmp_path):  # noqa: F811
    from queryvision_mm.apis.mao import run_extract
    from queryvision_mm.apis.mao_extract import cache_entry
    tiny_gallery(tmp_path)
    cfg = tiny_cfg(models, tmp_path)
    work = tmp_path / 'work'
    res = run_extract(cfg, str(work), progress=False)
    cache = work / 'gallery_cache'
    top = sorted(os.listdir(cache))
    assert 'fingerprint.json' in top and all(len(n) == 2 for n in top if n != 'fingerprint.json')
    for i in range(4):
        npz, meta = cache_entry(str(cache), str(tmp_path / f'g{i}.jpg'))
        key = osp.basename(npz)[:-4]
        assert osp.isfile(npz) and osp.isfile(meta) and npz == str(cache / key[:2] / key[2:4] / (key + '.npz'))
    assert json.loads((cache / 'fingerprint.json').read_text())['layout'] == 'sharded-v2'
    assert res['gallery'] == 4 and res['computed'] == 4
    # a cache of the earlier flat layout (fingerprint without layout, files in the top folder) is refused
    old = tmp_path / 'old' / 'gallery_cache'
    old.mkdir(parents=True)
    (old / 'fingerprint.json').write_text(json.dumps(dict(model='0123456789abcdef')))
    with pytest.raises(ValueError, match='earlier version'):
        run_extract(cfg, str(tmp_path / 'old'), progress=False)
    (old / 'fingerprint.json').unlink()
    np.savez(old / ('a' * 40 + '.npz'), descriptor=np.zeros(3))
    with pytest.raises(ValueError, match='flat layout of an earlier version'):
        run_extract(cfg, str(tmp_path / 'old'), progress=False)


def test_device_cuda_without_cuda_is_a_clear_error(models, tmp_path):  # noqa: F811
    from queryvision_mm.apis.mao import run_extract
    from queryvision_mm.apis.mao_extract import set_describer_options
    if torch.cuda.is_available():
        pytest.skip('CUDA is available here')
    tiny_gallery(tmp_path)
    cfg = tiny_cfg(models, tmp_path)
    set_describer_options(cfg, device='cuda', batch_size=2)
    assert cfg.model.device == 'cuda' and cfg.model.batch_size == 2
    with pytest.raises(RuntimeError, match="device='cuda' but CUDA is not available"):
        run_extract(cfg, str(tmp_path / 'work'), progress=False)


def test_fingerprint_hashes_weight_contents_once(tmp_path, monkeypatch):
    from queryvision_mm.apis import mao_extract
    adapter = tmp_path / 'lora_adapter'
    adapter.mkdir()
    (adapter / 'adapter_config.json').write_text('{"r": 4}')
    (adapter / 'adapter_model.safetensors').write_bytes(b'\x01' * 64)
    cfg = dict(type='QVMaODescriber', encoder=dict(type='QVDINOv2CropEncoder', model_dir=str(tmp_path / 'none'),
                                                   lora_adapter=str(adapter)), device='cpu', batch_size=4)
    reads = []
    real = mao_extract._DigestCache.hash_file
    monkeypatch.setattr(mao_extract._DigestCache, 'hash_file', staticmethod(lambda p: reads.append(p) or real(p)))
    rec = mao_extract.fingerprint_record(cfg)
    assert list(rec['weights']) == [str(adapter)] and len(reads) == 2
    assert mao_extract.fingerprint(cfg) == rec['model'] and len(reads) == 2, 'digests cached by (path, size, mtime)'
    # run-time settings do not change the fingerprint; other settings do
    assert mao_extract.fingerprint(dict(cfg, device='cuda:3', batch_size=64)) == rec['model']
    assert mao_extract.fingerprint(dict(cfg, amp='bf16')) != rec['model']
    # touched (new mtime), same content: rehashed once, same fingerprint (content, not size + mtime)
    st = os.stat(adapter / 'adapter_model.safetensors')
    os.utime(adapter / 'adapter_model.safetensors', ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert mao_extract.fingerprint(cfg) == rec['model'] and len(reads) == 3
    # retrained: same path, same size, new content
    (adapter / 'adapter_model.safetensors').write_bytes(b'\x02' * 64)
    assert mao_extract.fingerprint(cfg) != rec['model']


def _save_adapter(dino_dir, out_dir, seed):
    from peft import LoraConfig, get_peft_model
    from transformers import Dinov2Model
    torch.manual_seed(seed)
    model = get_peft_model(Dinov2Model.from_pretrained(dino_dir), LoraConfig(r=2, target_modules=['query', 'value']))
    for n, p in model.named_parameters():
        if 'lora_B' in n:
            torch.nn.init.normal_(p, std=0.5)     # a "trained" adapter (peft initialises B to zero)
    model.save_pretrained(out_dir)


def test_retrained_adapter_does_not_reuse_stale_descriptors(models, tmp_path):  # noqa: F811
    """The old fingerprint hashed the config only: after retraining stage A into the same folder, extract.py
    reused every cached descriptor of the previous adapter."""
    from queryvision_mm.apis.mao import run_extract
    mroot, _ = models
    tiny_gallery(tmp_path)
    adapter = str(tmp_path / 'lora_adapter')
    _save_adapter(str(mroot / 'dinov2'), adapter, seed=0)
    cfg = tiny_cfg(models, tmp_path)
    cfg.model.encoder = dict(type='QVDINOv2CropEncoder', model_dir=str(mroot / 'dinov2'), input_size=28,
                             lora_adapter=adapter)
    cfg.model.masks = cfg.model.refine = None
    work = str(tmp_path / 'work')
    first = run_extract(cfg, work, progress=False)
    assert first['computed'] == 4
    assert run_extract(cfg, work, progress=False)['cached'] == 4
    _save_adapter(str(mroot / 'dinov2'), adapter, seed=1)     # stage A retrained into the same folder
    with pytest.raises(ValueError, match=r'another model configuration .*weight files changed: .*lora_adapter'):
        run_extract(cfg, work, progress=False)
    fresh = run_extract(cfg, str(tmp_path / 'work2'), progress=False)
    assert fresh['computed'] == 4
    stale, new = _descriptors(work), _descriptors(str(tmp_path / 'work2'))
    assert stale.keys() == new.keys() and not any(np.allclose(stale[k], new[k], atol=1e-4) for k in stale)


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, argv):
    """One rank of ``torchrun --nproc_per_node 2 tools/mao/extract.py ... --launcher pytorch``: torchrun's
    environment, then the tool's own ``main`` (forked from the test process, so nothing is imported twice)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.cuda.is_available = lambda: False       # gloo on the CPU even on a GPU machine (CUDA and fork)
    tool = load_module_from_path('qv_tools_mao_extract', osp.join(REPO, 'tools/mao/extract.py'))
    if tool.main(argv) != 0:
        raise SystemExit(f'rank {rank} failed')


def _descriptors(work):
    from queryvision_mm.apis.mao_extract import iter_cache_meta
    out = {}
    for meta in iter_cache_meta(osp.join(work, 'gallery_cache')):
        with open(meta) as f:
            path = json.load(f)['img_path']
        with np.load(meta[:-5] + '.npz') as z:
            out[path] = z['descriptor']
    return out


def test_two_processes_equal_one_and_resume_by_shard(models, tmp_path):  # noqa: F811
    from queryvision_mm.apis.mao import run_extract
    from queryvision_mm.apis.mao_extract import cache_entry
    from queryvision_mm.testing.demo_data.demo_photos import generate_demo_soir
    data = tmp_path / 'demo'
    generate_demo_soir(str(data), size=(120, 90), object_side=(14, 20))
    (data / 'anns.json').symlink_to(data / 'annotations' / 'anns.json')
    cfg = tiny_cfg(models, data)
    cfg.model.batch_size = 2
    one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
    ref = run_extract(cfg, one, progress=False)
    assert ref['gallery'] == 12 and ref['objects'] > 12 and ref['ranks'] == 1
    # the 2-process run starts from a copy of the cache with the first 6 gallery images missing: both ranks
    # describe 3 of them (i % 2 == rank) and read the 6 others from their cache shards
    import shutil
    shutil.copytree(osp.join(one, 'gallery_cache'), osp.join(two, 'gallery_cache'))
    gallery = sorted(p for p in _descriptors(one))
    items = json.loads((data / 'anns.json').read_text())
    order = [str(data / k) for k, v in items.items() if not v['is_query']]
    assert sorted(order) == gallery
    for path in order[:6]:
        for f in cache_entry(osp.join(two, 'gallery_cache'), path):
            os.remove(f)
    cfg_file = tmp_path / 'dist_cfg.py'
    cfg.dump(str(cfg_file))
    import torch.multiprocessing as mp
    argv = [str(cfg_file), '--work-dir', two, '--launcher', 'pytorch', '--device', 'cpu']
    mp.start_processes(_rank_main, args=(2, _free_port(), argv), nprocs=2, join=True, start_method='fork')
    res = json.loads(open(osp.join(two, 'results.json')).read())
    assert res['ranks'] == 2 and res['computed'] == 6 and res['cached'] == 6 and res['gallery'] == 12
    d1, d2 = _descriptors(one), _descriptors(two)
    assert d1.keys() == d2.keys()
    for path in d1:
        np.testing.assert_allclose(d2[path], d1[path], atol=1e-6, err_msg=path)
    assert res['rankings'] == ref['rankings'] and res['mAP'] == pytest.approx(ref['mAP'])
    assert json.loads(open(osp.join(two, 'proposals.json')).read()).keys() == set(order)
