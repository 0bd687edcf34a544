"""A saved, reloadable FAISS index of one descriptor per gallery image (MaO search at scale).

Inner product over L2-normalised descriptors (= cosine), as the official MaO ``search_index.py`` (``IndexFlatIP``).
The index type comes from the config's ``index`` dict (see :mod:`queryvision_mm.utils.ann_index`): exact
``type='flat'`` (default; what benchmark mAP uses) or FAISS's approximate HNSW / IVF-Flat / IVF-SQ8 / IVF-PQ
indexes, optionally behind an OPQ / PCA transform and with re-ranking, trained on a seeded sample of the gallery.

``save(dir)`` writes ``index.faiss`` (FAISS's own format, no pickle) and ``index_meta.json``: gallery image paths,
dimension, metric, count, the index spec and its factory string, SHA-1 fingerprints of the gallery ids (paths), of
the descriptors as added, and of ``index.faiss`` itself, plus free-form provenance (``meta``). ``load`` checks all
of them and names the file that disagrees; a config whose build settings differ from the saved index is refused
(search-time settings such as ``nprobe`` / ``efSearch`` may change).

GPU: with faiss-gpu and ``use_gpu=True`` the index is cloned to the GPU for searching (saved from the CPU copy).
faiss-gpu answers at most k = 2048 (and nprobe <= 2048) per search; larger searches -- e.g. ``k=None``, the full
ranking -- and indexes faiss-gpu cannot hold (HNSW) run on the CPU copy instead.
"""
import hashlib
import json
import os
import os.path as osp
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .ann_index import (GPU_MAX_K, _faiss, build_index, build_keys, default_train_size, factory_string, index_spec,
                        min_train_size, search_params, set_search_params, structure, train_sample)

META_FORMAT = 2


def normalize_rows(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f'descriptors must be [N, D], got shape {x.shape}')
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise ValueError(f'descriptor {bad} holds NaN/inf')
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f'descriptor {int(np.flatnonzero(norms[:, 0] == 0)[0])} is all zeros')
    return x / norms


def _sha1_file(path: str) -> str:
    h = hashlib.sha1()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 24), b''):
            h.update(block)
    return h.hexdigest()


def ids_fingerprint(paths: Sequence[str]) -> str:
    h = hashlib.sha1()
    for p in paths:
        h.update(str(p).encode('utf-8') + b'\0')
    return h.hexdigest()


class DescriptorIndex:
    """Cosine search over gallery descriptors, with the gallery image paths kept alongside.

    Args:
        dim: descriptor dimension.
        use_gpu: search on the GPU when faiss-gpu and a GPU are present.
        **spec: the index settings (``type='flat'`` by default; see :func:`ann_index.index_spec`).
    """

    def __init__(self, dim: int, use_gpu: bool = False, **spec) -> None:
        faiss = _faiss()
        self.dim = int(dim)
        self.spec = index_spec(spec)
        self.factory = factory_string(self.spec, self.dim)
        self.paths: List[str] = []
        self.meta: Dict[str, object] = {}
        self.trained_on = 0
        self.cpu_index = build_index(self.spec, self.dim)
        self.use_gpu = bool(use_gpu) and hasattr(faiss, 'StandardGpuResources') and faiss.get_num_gpus() > 0
        self._gpu_index = None
        self._desc_sha1 = hashlib.sha1()

    @property
    def is_exact(self) -> bool:
        return self.spec['type'] == 'flat' and self.spec['pretransform'] is None

    @property
    def index(self):
        """The index searches go to: the GPU clone when available, else the CPU index."""
        if self.use_gpu:
            if self._gpu_index is None:
                faiss = _faiss()
                try:
                    self._res = faiss.StandardGpuResources()
                    self._gpu_index = faiss.index_cpu_to_gpu(self._res, 0, self.cpu_index)
                    set_search_params(self._gpu_index, self.spec)
                except (RuntimeError, AttributeError) as e:   # e.g. HNSW: no GPU implementation
                    warnings.warn(f'faiss-gpu cannot hold a {self.factory!r} index ({e}); searching on the CPU')
                    self.use_gpu = False
                    return self.cpu_index
            return self._gpu_index
        return self.cpu_index

    def __len__(self) -> int:
        return int(self.cpu_index.ntotal)

    def set_search_params(self, **params) -> None:
        """Change search-time settings (``nprobe``, ``efSearch``, ``k_factor``) of a built or loaded index."""
        bad = set(params) - {'nprobe', 'efSearch', 'k_factor'}
        if bad:
            raise ValueError(f'{sorted(bad)} are build settings of the index, not search settings')
        self.spec = index_spec({**self.spec, **{k: v for k, v in params.items() if v is not None}})
        set_search_params(self.cpu_index, self.spec)
        if self._gpu_index is not None:
            set_search_params(self._gpu_index, self.spec)

    def train(self, descriptors: np.ndarray) -> None:
        """Train the index (k-means / PQ / OPQ / PCA) on a seeded sample of ``descriptors`` (``train_size`` rows)."""
        if self.cpu_index.is_trained:
            return
        x = normalize_rows(descriptors)
        if x.shape[1] != self.dim:
            raise ValueError(f'descriptors have {x.shape[1]} dims, the index {self.dim}')
        sample = train_sample(x, default_train_size(self.spec), self.spec['seed'])
        need = min_train_size(self.spec, self.dim)
        if len(sample) < need:
            raise ValueError(f'index {self.factory!r} needs at least {need} training descriptors, got {len(sample)}: '
                             f'use index.type="flat" (exact) or smaller nlist / nbits for a gallery this small')
        self.cpu_index.train(sample)
        self.trained_on = len(sample)
        self._gpu_index = None

    def add(self, descriptors: np.ndarray, paths: Sequence[str]) -> None:
        """Add descriptors (L2-normalised here); an untrained index is first trained on a sample of them."""
        x = normalize_rows(descriptors)
        if x.shape[1] != self.dim:
            raise ValueError(f'descriptors have {x.shape[1]} dims, the index {self.dim}')
        if len(paths) != len(x):
            raise ValueError(f'{len(x)} descriptors but {len(paths)} paths')
        if not self.cpu_index.is_trained:
            self.train(x)
        self.cpu_index.add(x)
        self._desc_sha1.update(x.tobytes())
        self._gpu_index = None
        self.paths.extend(str(p) for p in paths)

    def _search_target(self, k: int):
        """GPU clone unless k (or nprobe) is above faiss-gpu's limit, then the CPU copy."""
        if self.use_gpu and (k > GPU_MAX_K or (self.spec.get('nprobe') or 0) > GPU_MAX_K):
            return self.cpu_index
        return self.index

    def search(self, queries: np.ndarray, k: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k], gallery indices [Q, k]); ``k=None`` ranks the whole gallery. Approximate indexes may
        return fewer than k hits: the rest of a row is id -1 (score -inf / FAISS's filler)."""
        if len(self) == 0:
            raise ValueError('the descriptor index is empty: add gallery descriptors first')
        q = normalize_rows(queries)
        if q.shape[1] != self.dim:
            raise ValueError(f'queries have {q.shape[1]} dims, the index {self.dim}')
        k = len(self) if k is None else min(int(k), len(self))
        return self._search_target(k).search(q, k)

    def fingerprints(self) -> Dict[str, str]:
        return dict(ids_sha1=ids_fingerprint(self.paths), descriptors_sha1=self._desc_sha1.hexdigest())

    def check_descriptors(self, descriptors: np.ndarray, paths: Sequence[str], source: str = 'the index') -> None:
        """Raise unless ``descriptors`` / ``paths`` are exactly what was added (e.g. to reuse a saved index)."""
        h = hashlib.sha1(normalize_rows(descriptors).tobytes()).hexdigest()
        got = dict(ids_sha1=ids_fingerprint(paths), descriptors_sha1=h)
        for key, val in self.fingerprints().items():
            if val is None:
                raise ValueError(f'{source}: no {key.split("_")[0]} fingerprint (descriptors were added after '
                                 'loading it); rebuild the index')
            if got[key] != val:
                raise ValueError(f'{source}: {key.split("_")[0]} fingerprint {val[:12]} does not match the given '
                                 f'gallery ({got[key][:12]}): the index was built from other descriptors')

    def save(self, out_dir: str) -> None:
        faiss = _faiss()
        os.makedirs(out_dir, exist_ok=True)
        idx_file, meta_file = osp.join(out_dir, 'index.faiss'), osp.join(out_dir, 'index_meta.json')
        faiss.write_index(self.cpu_index, idx_file + '.tmp')
        meta = dict(format=META_FORMAT, dim=self.dim, metric='inner_product', count=len(self), spec=self.spec,
                    factory=self.factory, structure=list(structure(self.cpu_index)), trained_on=self.trained_on,
                    index_sha1=_sha1_file(idx_file + '.tmp'), **self.fingerprints(), paths=self.paths, meta=self.meta)
        with open(meta_file + '.tmp', 'w') as f:
            json.dump(meta, f)
        os.replace(idx_file + '.tmp', idx_file)
        os.replace(meta_file + '.tmp', meta_file)

    @classmethod
    def load(cls, in_dir: str, use_gpu: bool = False, **spec) -> 'DescriptorIndex':
        """Load ``in_dir/index.faiss`` + ``index_meta.json`` and check them; ``spec`` (a config's ``index``
        settings, optional) must match the saved build settings, its search settings override the saved ones."""
        faiss = _faiss()
        idx_file, meta_file = osp.join(in_dir, 'index.faiss'), osp.join(in_dir, 'index_meta.json')
        for f in (idx_file, meta_file):
            if not osp.isfile(f):
                raise FileNotFoundError(f'descriptor index file not found: {f}')
        try:
            with open(meta_file) as f:
                meta = json.load(f)
            dim, count, paths = int(meta['dim']), int(meta['count']), list(meta['paths'])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f'{meta_file}: not a descriptor index description ({e!r})') from e
        legacy = 'format' not in meta        # written before index specs and fingerprints existed: flat only
        if not legacy and meta.get('index_sha1') != _sha1_file(idx_file):
            raise ValueError(f'{idx_file} does not match the fingerprint recorded in {meta_file}: it was rewritten '
                             'or copied from another build; rebuild the index')
        try:
            cpu_index = faiss.read_index(idx_file)
        except RuntimeError as e:
            raise ValueError(f'{idx_file}: not a readable FAISS index ({str(e).strip().splitlines()[-1]})') from e
        if cpu_index.d != dim or cpu_index.ntotal != count or len(paths) != count:
            raise ValueError(f'{in_dir}: index.faiss ({cpu_index.ntotal} x {cpu_index.d}) and index_meta.json '
                             f'({count} x {dim}, {len(paths)} paths) disagree')
        if cpu_index.metric_type != faiss.METRIC_INNER_PRODUCT or meta.get('metric', 'inner_product') != \
                'inner_product':
            raise ValueError(f'{idx_file}: metric {cpu_index.metric_type} / {meta.get("metric")!r}; MaO descriptors '
                             'are searched by inner product (METRIC_INNER_PRODUCT)')
        saved_spec = index_spec({'type': 'flat'} if legacy else meta['spec'])
        if not legacy:
            if meta.get('ids_sha1') != ids_fingerprint(paths):
                raise ValueError(f'{meta_file}: the gallery paths do not match their recorded fingerprint '
                                 '(the file was edited); rebuild the index')
            want = list(structure(build_index(saved_spec, dim)))
            if list(structure(cpu_index)) != want or meta.get('structure') != want:
                raise ValueError(f'{idx_file} holds a {"/".join(structure(cpu_index))} index but {meta_file} '
                                 f'records {meta.get("factory")!r} ({"/".join(want)})')
        if spec:
            asked = index_spec(spec)
            diff = {k: (saved_spec[k], v) for k, v in build_keys(asked).items() if saved_spec.get(k) != v}
            if diff:
                raise ValueError(f'{meta_file}: the index was built as {meta.get("factory", "Flat")!r}; the config '
                                 f'asks for other build settings ' +
                                 ', '.join(f'{k}: saved {a!r} != config {b!r}' for k, (a, b) in diff.items()) +
                                 '; rebuild the index (tools/mao/extract.py) or match the config to it')
            saved_spec.update(search_params(asked))
        out = cls(dim, use_gpu=use_gpu, **saved_spec)
        out.cpu_index, out.paths, out.meta = cpu_index, paths, dict(meta.get('meta', {}))
        out.trained_on = int(meta.get('trained_on', 0))
        set_search_params(out.cpu_index, out.spec)
        out._desc_sha1 = _FrozenDigest(meta.get('descriptors_sha1'))
        return out


class _FrozenDigest:
    """The descriptors' SHA-1 recorded at save time (a loaded index no longer sees its descriptors)."""

    def __init__(self, hexdigest: Optional[str]) -> None:
        self._hex = hexdigest

    def update(self, data: bytes) -> None:
        self._hex = None    # descriptors added after loading: no fingerprint describes the whole index any more

    def hexdigest(self) -> Optional[str]:
        return self._hex
