"""A saved, reloadable FAISS index of one descriptor per gallery image (MaO search at scale).

Exact inner-product search (``IndexFlatIP``, as the official code) over L2-normalised descriptors; on a machine
with GPU FAISS (``faiss-gpu``) and ``use_gpu=True`` the index is moved to the GPU for searching and saved back from
the CPU copy. ``save(dir)`` writes ``index.faiss`` (FAISS's own format, no pickle) and ``index_meta.json`` (gallery
image paths, dimension, count, free-form provenance); ``load`` checks they agree.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is in requirements/optional.txt
        raise ImportError('the descriptor index needs faiss (pip install faiss-cpu)') from e
    return faiss


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


class DescriptorIndex:
    """Exact cosine search over gallery descriptors, with the gallery image paths kept alongside."""

    def __init__(self, dim: int, use_gpu: bool = False) -> None:
        faiss = _faiss()
        self.dim = int(dim)
        self.paths: List[str] = []
        self.meta: Dict[str, object] = {}
        self.cpu_index = faiss.IndexFlatIP(self.dim)
        self.use_gpu = bool(use_gpu) and hasattr(faiss, 'StandardGpuResources') and faiss.get_num_gpus() > 0
        self._gpu_index = None

    @property
    def index(self):
        if self.use_gpu:
            if self._gpu_index is None:
                faiss = _faiss()
                self._res = faiss.StandardGpuResources()
                self._gpu_index = faiss.index_cpu_to_gpu(self._res, 0, self.cpu_index)
            return self._gpu_index
        return self.cpu_index

    def __len__(self) -> int:
        return int(self.cpu_index.ntotal)

    def add(self, descriptors: np.ndarray, paths: Sequence[str]) -> None:
        x = normalize_rows(descriptors)
        if x.shape[1] != self.dim:
            raise ValueError(f'descriptors have {x.shape[1]} dims, the index {self.dim}')
        if len(paths) != len(x):
            raise ValueError(f'{len(x)} descriptors but {len(paths)} paths')
        self.cpu_index.add(x)
        self._gpu_index = None
        self.paths.extend(str(p) for p in paths)

    def search(self, queries: np.ndarray, k: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k], gallery indices [Q, k]); ``k=None`` ranks the whole gallery."""
        if len(self) == 0:
            raise ValueError('the descriptor index is empty: add gallery descriptors first')
        q = normalize_rows(queries)
        if q.shape[1] != self.dim:
            raise ValueError(f'queries have {q.shape[1]} dims, the index {self.dim}')
        k = len(self) if k is None else min(int(k), len(self))
        return self.index.search(q, k)

    def save(self, out_dir: str) -> None:
        faiss = _faiss()
        os.makedirs(out_dir, exist_ok=True)
        faiss.write_index(self.cpu_index, osp.join(out_dir, 'index.faiss'))
        with open(osp.join(out_dir, 'index_meta.json'), 'w') as f:
            json.dump(dict(dim=self.dim, count=len(self), paths=self.paths, meta=self.meta), f)

    @classmethod
    def load(cls, in_dir: str, use_gpu: bool = False) -> 'DescriptorIndex':
        faiss = _faiss()
        idx_file, meta_file = osp.join(in_dir, 'index.faiss'), osp.join(in_dir, 'index_meta.json')
        for f in (idx_file, meta_file):
            if not osp.isfile(f):
                raise FileNotFoundError(f'descriptor index file not found: {f}')
        with open(meta_file) as f:
            meta = json.load(f)
        cpu_index = faiss.read_index(idx_file)
        if cpu_index.d != meta['dim'] or cpu_index.ntotal != meta['count'] or len(meta['paths']) != meta['count']:
            raise ValueError(f'{in_dir}: index.faiss ({cpu_index.ntotal} x {cpu_index.d}) and index_meta.json '
                             f'({meta["count"]} x {meta["dim"]}, {len(meta["paths"])} paths) disagree')
        out = cls(meta['dim'], use_gpu=use_gpu)
        out.cpu_index, out.paths, out.meta = cpu_index, list(meta['paths']), dict(meta.get('meta', {}))
        return out
