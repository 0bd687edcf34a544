"""MaO gallery extraction at scale: batched, sharded across the ranks of a distributed run, resumable, with a cache
whose fingerprint covers the model configuration *and the weights*.

* **Cache layout** (``WORK_DIR/gallery_cache/``): one ``<sha1(image path)>.npz`` (descriptor, boxes, fallback) +
  ``.json`` (image path, boxes, scores, SAM masks as COCO RLE) per gallery image, in two levels of sub-folders named
  by the first two and next two hex digits of that hash (``ab/cd/abcd....npz``: 65,536 folders, ~15 files each for
  a million images); ``fingerprint.json`` at the top. The flat layout of earlier versions (every file in one folder,
  descriptors resized without antialiasing) is refused with a message saying so.
* **Fingerprint**: SHA-1 of the describer config (minus run-time keys: ``device``, ``batch_size``,
  ``refine_max_crops``) plus the SHA-256 of the *content* of every weight file or folder it names (``model_dir``,
  ``checkpoint``, ``pretrained``, ``lora_adapter``, ``model_name='local-dir:...'``, ...). A retrained LoRA adapter
  at the same path therefore changes it and the stale cache is refused. Content digests are cached per file by
  (real path, size, mtime in ns) in ``$QV_DIGEST_CACHE`` (default ``~/.cache/queryvision_mm/file_digests.json``), so
  gigabytes of weights are read once, not on every run.
* **Distributed** (``torchrun ... tools/mao/extract.py CONFIG --launcher pytorch``; mmengine's ``get_dist_info``,
  ``broadcast_object_list``, ``collect_results``): rank r describes the images i with i % world == r (its cache
  shard: every rank writes only its own images' files, atomically), skipping those already cached (resume per
  shard); rank 0 checks / writes the fingerprint before anyone starts, collects the shards' descriptors and returns
  them in dataset order; the other ranks return ``descs=None``.
"""
import hashlib
import json
import os
import os.path as osp
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

CACHE_LAYOUT = 'sharded-v2'   # v2: antialiased resizing, weight digests, two-level sub-folders
RUNTIME_KEYS = frozenset({'device', 'batch_size', 'refine_max_crops'})
_WEIGHT_KEYS = frozenset({'model_dir', 'checkpoint', 'pretrained', 'lora_adapter', 'model_name', 'weights'})
_WEIGHT_SUFFIXES = ('_dir', '_checkpoint', '_adapter', '_weights')


# ----------------------------------------------------------------------------------------------------- fingerprint
def digest_cache_file() -> str:
    return os.environ.get('QV_DIGEST_CACHE') or osp.join(
        os.environ.get('XDG_CACHE_HOME') or osp.join(osp.expanduser('~'), '.cache'), 'queryvision_mm',
        'file_digests.json')


class _DigestCache:
    """SHA-256 of file contents, remembered by (real path, size, mtime_ns)."""

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = path or digest_cache_file()
        self.changed = False
        try:
            with open(self.path) as f:
                self.table = json.load(f)
        except (OSError, ValueError):
            self.table = {}

    def file(self, path: str) -> str:
        real = osp.realpath(path)
        st = os.stat(real)
        rec = self.table.get(real)
        if rec and rec.get('size') == st.st_size and rec.get('mtime_ns') == st.st_mtime_ns:
            return rec['sha256']
        self.table[real] = dict(size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=self.hash_file(real))
        self.changed = True
        return self.table[real]['sha256']

    @staticmethod
    def hash_file(path: str) -> str:
        h = hashlib.sha256()
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(1 << 23), b''):
                h.update(block)
        return h.hexdigest()

    def path_digest(self, path: str) -> str:
        """A file's digest, or a folder's: SHA-256 over its files' relative paths and digests."""
        if osp.isfile(path):
            return self.file(path)
        h = hashlib.sha256()
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = osp.join(root, name)
                h.update(f'{osp.relpath(full, path)}\0{self.file(full)}\n'.encode())
        return h.hexdigest()

    def save(self) -> None:
        if not self.changed:
            return
        try:     # best effort: a read-only home only costs rehashing next time
            os.makedirs(osp.dirname(self.path), exist_ok=True)
            tmp = f'{self.path}.{os.getpid()}.tmp'
            with open(tmp, 'w') as f:
                json.dump(self.table, f)
            os.replace(tmp, self.path)
        except OSError:
            pass


def _plain(cfg):
    return cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg


def _strip_runtime(obj):
    if isinstance(obj, dict):
        return {k: _strip_runtime(v) for k, v in obj.items() if k not in RUNTIME_KEYS}
    if isinstance(obj, (list, tuple)):
        return [_strip_runtime(v) for v in obj]
    return obj


def weight_paths(cfg) -> List[str]:
    """Weight files / folders named by a describer config (keys such as ``model_dir``, ``checkpoint``,
    ``pretrained``, ``lora_adapter``, ``model_name='local-dir:...'``) that exist."""
    found = []

    def walk(obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                if isinstance(v, str) and (k in _WEIGHT_KEYS or str(k).endswith(_WEIGHT_SUFFIXES)):
                    p = v[len('local-dir:'):] if v.startswith('local-dir:') else v
                    if p and (osp.isfile(p) or osp.isdir(p)) and p not in found:
                        found.append(p)
                else:
                    walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(_plain(cfg))
    return found


def fingerprint_record(model_cfg) -> Dict[str, object]:
    """dict(model=<16 hex digits>, layout, weights={path: sha256}) of a describer config (module docstring)."""
    cfg = _plain(model_cfg)
    cache = _DigestCache()
    weights = {p: cache.path_digest(p) for p in weight_paths(cfg)}
    cache.save()
    text = json.dumps(dict(config=_strip_runtime(cfg), weights=weights, layout=CACHE_LAYOUT), sort_keys=True,
                      default=str)
    return dict(model=hashlib.sha1(text.encode()).hexdigest()[:16], layout=CACHE_LAYOUT, weights=weights)


def fingerprint(model_cfg) -> str:
    """The 16-hex-digit fingerprint of a describer config and its weights (stored in caches and indexes)."""
    return fingerprint_record(model_cfg)['model']


# ----------------------------------------------------------------------------------------------------- cache files
def cache_entry(cache_dir: str, img_path: str) -> Tuple[str, str]:
    """(descriptor .npz, metadata .json) of an image in the sharded cache."""
    key = hashlib.sha1(img_path.encode()).hexdigest()
    base = osp.join(cache_dir, key[:2], key[2:4], key)
    return base + '.npz', base + '.json'


def iter_cache_meta(cache_dir: str):
    """Paths of every metadata .json of a (sharded) cache."""
    for root, dirs, files in os.walk(cache_dir):
        dirs.sort()
        for name in sorted(files):
            if name.endswith('.json') and not (root == cache_dir and name == 'fingerprint.json'):
                yield osp.join(root, name)


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(size=list(r['size']), counts=r['counts'].decode('ascii'))


def _atomic_write(path: str, write: Callable[[str], None], suffix: str) -> None:
    tmp = f'{path}.{os.getpid()}.tmp{suffix}'
    write(tmp)
    os.replace(tmp, path)    # a crash never leaves a half-written cache entry


def open_cache(cache_dir: str, record: Dict[str, object]) -> Optional[str]:
    """Create or check ``cache_dir`` for ``record`` (:func:`fingerprint_record`); an error message or None."""
    os.makedirs(cache_dir, exist_ok=True)
    fp_file = osp.join(cache_dir, 'fingerprint.json')
    if osp.isfile(fp_file):
        with open(fp_file) as f:
            old = json.load(f)
        if old.get('layout') != CACHE_LAYOUT:
            return (f'{cache_dir} is a gallery cache of an earlier version (flat layout, descriptors resized without '
                    'antialiasing, no weight digests): it cannot be reused; delete it or use another work_dir')
        if old.get('model') != record['model']:
            changed = sorted(p for p in set(old.get('weights', {})) | set(record['weights'])
                             if old.get('weights', {}).get(p) != record['weights'].get(p))
            why = f'; weight files changed: {changed}' if changed else ''
            return (f'{cache_dir} holds descriptors of another model configuration ({old.get("model")} != '
                    f'{record["model"]}{why}); use another work_dir or delete the cache')
        return None
    with os.scandir(cache_dir) as it:
        if any(e.is_file() and e.name.endswith('.npz') for e in it):
            return (f'{cache_dir} holds descriptor files in the flat layout of an earlier version: it cannot be '
                    'reused; delete it or use another work_dir')
    def write(p):
        with open(p, 'w') as f:
            json.dump(record, f, indent=1)

    _atomic_write(fp_file, write, '.json')
    return None


def _write_entry(cache_dir: str, img_path: str, out: Dict) -> None:
    npz, meta = cache_entry(cache_dir, img_path)
    os.makedirs(osp.dirname(npz), exist_ok=True)
    masks = out['masks']
    info = dict(img_path=img_path, boxes=out['boxes'].tolist(), scores=out['scores'].tolist(),
                masks=[_rle(m) for m in masks.cpu().numpy()] if masks is not None else None)

    def write_json(p):
        with open(p, 'w') as f:
            json.dump(info, f)

    _atomic_write(meta, write_json, '.json')
    _atomic_write(npz, lambda p: np.savez(p, descriptor=out['descriptor'], boxes=out['boxes'].cpu().numpy(),
                                          fallback=bool(out['fallback'])), '.npz')


# ----------------------------------------------------------------------------------------------------- set-up
def set_describer_options(cfg, device: Optional[str] = None, amp: Optional[str] = None,
                          batch_size: Optional[int] = None) -> None:
    """Command-line overrides of the describer's run-time settings (``cfg.describer``, else ``cfg.model`` or the
    ``describer`` of a ``QVMaORetriever`` model: ``apis.mao.describer_cfg``)."""
    dcfg = cfg.get('describer') or cfg.model
    if dcfg.get('type') == 'QVMaORetriever':
        dcfg = dcfg.describer
    for key, value in (('device', device), ('amp', amp), ('batch_size', batch_size)):
        if value is not None:
            dcfg[key] = value


def init_distributed(cfg, launcher: str) -> Tuple[int, int]:
    """Start the process group of a ``--launcher`` run: gloo on CPU-only machines (``utils.dist``, as
    ``tools/train.py``), otherwise mmengine's ``init_dist`` (which also sets each rank's CUDA device, so
    ``device='cuda'`` is the rank's own GPU). Returns (rank, world size)."""
    from mmengine.dist import get_dist_info, init_dist

    from ..utils.dist import setup_cpu_distributed
    if not setup_cpu_distributed(cfg, launcher):
        dist_cfg = dict((cfg.get('env_cfg') or {}).get('dist_cfg') or {})
        dist_cfg.setdefault('backend', 'nccl')
        init_dist(launcher, **dist_cfg)
    return get_dist_info()


# ----------------------------------------------------------------------------------------------------- extraction
def extract_gallery(describer, items: Sequence[dict], cache_dir: str,
                    fingerprint: Union[str, Dict, Callable[[], Dict]], on_error: str = 'error', progress: bool = True,
                    batch_size: Optional[int] = None) -> Tuple[Optional[np.ndarray], List[str], List[str], Dict]:
    """Descriptors of the gallery ``items`` (dataset entries) through the sharded cache under ``cache_dir``.

    ``fingerprint``: :func:`fingerprint_record`'s dict, a callable giving it (evaluated on rank 0 only), or a bare
    fingerprint string. Images are described ``batch_size`` at a time (default: the describer's ``batch_size``, 8)
    with :meth:`QVMaODescriber.describe_gallery_batch`. In a distributed run each rank describes its shard and rank 0
    returns the merged result (module docstring); other ranks return ``(None, [], [], {})``. ``on_error='skip'``
    leaves unreadable images out (returned in ``skipped``). Returns (descriptors [G, D] float32, image paths,
    skipped paths, stats).
    """
    from mmengine.dist import barrier, broadcast_object_list, collect_results, get_dist_info
    from tqdm import tqdm

    from ..utils.image_io import read_rgb
    if on_error not in ('error', 'skip'):
        raise ValueError(f"on_error must be 'error' or 'skip', got {on_error!r}")
    rank, world = get_dist_info()
    msg = [None]
    if rank == 0:
        rec = fingerprint() if callable(fingerprint) else fingerprint
        if isinstance(rec, str):
            rec = dict(model=rec, layout=CACHE_LAYOUT, weights={})
        msg = [open_cache(cache_dir, rec)]
    if world > 1:
        broadcast_object_list(msg, src=0)
    if msg[0] is not None:
        raise ValueError(msg[0])
    bs = int(batch_size or getattr(describer, 'batch_size', 8) or 8)
    mine = [(i, item) for i, item in enumerate(items) if i % world == rank]
    records = []
    bar = tqdm(total=len(mine), desc=f'gallery [rank {rank}/{world}]' if world > 1 else 'gallery', unit='img',
               disable=not progress or rank != 0)
    for start in range(0, len(mine), bs):
        todo, images = [], []
        for i, item in mine[start:start + bs]:
            path = item['img_path']
            npz = cache_entry(cache_dir, path)[0]
            if osp.isfile(npz):
                with np.load(npz, allow_pickle=False) as z:
                    records.append(dict(idx=i, path=path, desc=z['descriptor'], fallback=bool(z['fallback']),
                                        objects=int(len(z['boxes'])), cached=True))
                continue
            try:
                images.append(read_rgb(path))
            except OSError:
                if on_error == 'skip':
                    records.append(dict(idx=i, path=path, skipped=True))
                    continue
                raise
            todo.append((i, path))
        if todo:
            for (i, path), out in zip(todo, describer.describe_gallery_batch(images)):
                _write_entry(cache_dir, path, out)
                records.append(dict(idx=i, path=path, desc=out['descriptor'], fallback=bool(out['fallback']),
                                    objects=len(out['boxes']), cached=False))
        bar.update(len(mine[start:start + bs]))
    bar.close()
    if world > 1:
        records = collect_results(records, len(items), device='cpu', tmpdir=osp.join(cache_dir, '.collect'))
        barrier()
        if rank != 0:
            return None, [], [], {}
    records = sorted(records, key=lambda r: r['idx'])
    skipped = [r['path'] for r in records if r.get('skipped')]
    done = [r for r in records if not r.get('skipped')]
    stats = dict(cached=sum(r['cached'] for r in done), computed=sum(not r['cached'] for r in done),
                 fallback=sum(r['fallback'] for r in done), objects=sum(r['objects'] for r in done),
                 ranks=world)
    if not done:
        raise ValueError('the gallery is empty (no readable gallery image)')
    return np.stack([r['desc'] for r in done]).astype(np.float32), [r['path'] for r in done], skipped, stats
