"""Approximate FAISS indexes for MaO gallery search at scale, chosen by a small config dict.

MaO (arXiv 2503.07038; official ``search_index.py``; README "MaO") searches one L2-normalised descriptor per
gallery image with an exhaustive inner product (``IndexFlatIP``). That stays the default (``type='flat'``) and is what
benchmark mAP uses. For millions of images this module builds FAISS's own approximate indexes through
``faiss.index_factory`` -- nothing is re-implemented here -- always with ``METRIC_INNER_PRODUCT`` (= cosine on
normalised vectors, the same metric and scores as the exact index): HNSW graphs (Malkov & Yashunin, TPAMI 2018),
inverted files with scalar or product quantisation (Jégou et al., TPAMI 2011):

============  =======================================  =================================================
``type``      factory string                           build keys (search-time keys)
============  =======================================  =================================================
``flat``      ``Flat``                                 -- exact
``hnsw``      ``HNSW{M}[,SQ8|SQfp16]``                 ``M``, ``efConstruction``, ``storage`` (``efSearch``)
``ivf_flat``  ``IVF{nlist}[_HNSW32],Flat``             ``nlist``, ``quantizer`` (``nprobe``)
``ivf_sq8``   ``IVF{nlist}[_HNSW32],SQ8``              ``nlist``, ``quantizer`` (``nprobe``)
``ivf_pq``    ``IVF{nlist}[_HNSW32],PQ{m}x{nbits}``    ``nlist``, ``quantizer``, ``m``, ``nbits`` (``nprobe``)
``factory``   any ``factory`` string                   ``factory`` (``nprobe``, ``efSearch``, ``k_factor``)
============  =======================================  =================================================

Every type also takes ``pretransform``: ``'opq'`` -> ``OPQ{opq_m}_{pretransform_dim},``, a rotation learnt for PQ
(Ge et al., CVPR 2013; ``opq_niter`` alternations, FAISS default 50), or ``'pca'`` -> ``PCA{pretransform_dim},``;
``refine``: ``'flat'`` -> ``RFlat`` (exact re-ranking of ``k_factor * k`` candidates from the full vectors) or
``'sq8'`` / ``'fp16'`` -> ``Refine(SQ8|SQfp16)`` (re-ranking from 1- / 2-byte-per-dimension codes); ``train_size``
(descriptors sampled from the gallery to train k-means / PQ / OPQ / PCA; ``None`` = ``max(50 * nlist, 100_000)``,
capped by the gallery) and ``seed`` (the sample and FAISS's k-means seeds). ``quantizer='hnsw'`` assigns vectors to
lists through an HNSW graph over the centroids (faster adds and searches for large ``nlist``). Search-time keys can
be changed after loading a saved index; build keys cannot.
"""
import copy
from typing import Dict, Optional, Tuple

import numpy as np

#: faiss-gpu's largest k (and nprobe) per search call (``GPU_MAX_SELECTION_K``, CUDA builds since faiss 1.7.x).
GPU_MAX_K = 2048

INDEX_TYPES = ('flat', 'hnsw', 'ivf_flat', 'ivf_sq8', 'ivf_pq', 'factory')
_DEFAULTS = {
    'flat': dict(),
    'hnsw': dict(M=32, efConstruction=80, storage='Flat', efSearch=128),
    'ivf_flat': dict(nlist=1024, quantizer='flat', nprobe=32),
    'ivf_sq8': dict(nlist=1024, quantizer='flat', nprobe=32),
    'ivf_pq': dict(nlist=1024, quantizer='flat', m=64, nbits=8, nprobe=32),
    'factory': dict(factory=None),
}
_COMMON = dict(pretransform=None, pretransform_dim=None, opq_m=None, opq_niter=None, refine=None, train_size=None,
               seed=0)
SEARCH_KEYS = ('nprobe', 'efSearch', 'k_factor')
_REFINE = {None: '', 'flat': ',RFlat', 'sq8': ',Refine(SQ8)', 'fp16': ',Refine(SQfp16)'}
_HNSW_STORAGE = ('Flat', 'SQ8', 'SQfp16')


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is in requirements/optional.txt
        raise ImportError('the descriptor index needs faiss (pip install faiss-cpu)') from e
    return faiss


def index_spec(spec: Optional[dict] = None, **kwargs) -> Dict:
    """Validated index spec with every default filled in (``type`` defaults to ``'flat'``).

    Unknown keys, unknown types and impossible combinations raise ``ValueError`` naming the key."""
    raw = dict(spec or {}, **kwargs)
    typ = raw.pop('type', 'flat') or 'flat'
    if typ not in INDEX_TYPES:
        raise ValueError(f'index.type={typ!r} is not one of {INDEX_TYPES}')
    out = dict(type=typ, **copy.deepcopy(_DEFAULTS[typ]), **_COMMON, k_factor=None)
    if typ == 'factory':
        out.update(nprobe=None, efSearch=None)
    for k, v in raw.items():
        if k not in out:
            raise ValueError(f'index.{k} is not a setting of index type {typ!r} (settings: {sorted(out)})')
        out[k] = v
    if out['refine'] is not None and out['k_factor'] is None:
        out['k_factor'] = 4
    if out['refine'] not in _REFINE:
        raise ValueError(f'index.refine={out["refine"]!r} is not one of {list(_REFINE)}')
    if out['pretransform'] not in (None, 'opq', 'pca'):
        raise ValueError(f'index.pretransform={out["pretransform"]!r} is not one of None, "opq", "pca"')
    if typ == 'hnsw' and out['storage'] not in _HNSW_STORAGE:
        raise ValueError(f'index.storage={out["storage"]!r} is not one of {_HNSW_STORAGE}')
    if out.get('quantizer', 'flat') not in ('flat', 'hnsw'):
        raise ValueError(f'index.quantizer={out["quantizer"]!r} is not "flat" or "hnsw"')
    if typ == 'factory' and not isinstance(out['factory'], str):
        raise ValueError('index.type="factory" needs index.factory, a faiss index_factory string')
    if typ == 'factory' and (out['pretransform'] or out['refine'] or out['pretransform_dim']):
        raise ValueError('index.type="factory": write the pre-transform / refine stage into index.factory '
                         '(e.g. "OPQ64_768,IVF4096,PQ64,Refine(SQ8)")')
    if out['k_factor'] is not None and out['refine'] is None and typ != 'factory':
        raise ValueError('index.k_factor (re-ranking candidates) needs index.refine')
    for k in ('M', 'efConstruction', 'efSearch', 'nlist', 'nprobe', 'm', 'nbits', 'k_factor', 'pretransform_dim',
              'opq_m', 'opq_niter', 'train_size'):
        v = out.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise ValueError(f'index.{k}={v!r} must be a positive integer')
    if out.get('nbits') is not None and out['nbits'] > 16:
        raise ValueError(f'index.nbits={out["nbits"]} must be <= 16')
    return out


def build_keys(spec: Dict) -> Dict:
    """The part of a spec fixed when the index is built (everything except the search-time keys)."""
    return {k: v for k, v in spec.items() if k not in SEARCH_KEYS}


def search_params(spec: Dict) -> Dict:
    return {k: spec[k] for k in SEARCH_KEYS if spec.get(k) is not None}


def factory_string(spec: Dict, dim: int) -> str:
    """The ``faiss.index_factory`` string of a validated spec for ``dim``-dimensional descriptors."""
    s, typ = spec, spec['type']
    inner_dim, prefix = dim, ''
    if s['pretransform'] == 'pca':
        if s['pretransform_dim'] is None or s['pretransform_dim'] > dim:
            raise ValueError(f'index.pretransform="pca" needs index.pretransform_dim <= {dim}, '
                             f'got {s["pretransform_dim"]}')
        inner_dim = s['pretransform_dim']
        prefix = f'PCA{inner_dim},'
    elif s['pretransform'] == 'opq':
        inner_dim = s['pretransform_dim'] or dim
        opq_m = s['opq_m'] or s.get('m') or 64
        if inner_dim % opq_m:
            raise ValueError(f'index.opq_m={opq_m} must divide the OPQ output dimension {inner_dim}')
        prefix = f'OPQ{opq_m}_{inner_dim},'
    elif s['pretransform_dim'] is not None:
        raise ValueError('index.pretransform_dim is set but index.pretransform is None')
    if typ == 'factory':
        return s['factory']
    if typ == 'flat':
        body = 'Flat'
    elif typ == 'hnsw':
        body = f'HNSW{s["M"]}' + ('' if s['storage'] == 'Flat' else f',{s["storage"]}')
    else:
        ivf = f'IVF{s["nlist"]}' + ('_HNSW32' if s['quantizer'] == 'hnsw' else '')
        if typ == 'ivf_flat':
            body = f'{ivf},Flat'
        elif typ == 'ivf_sq8':
            body = f'{ivf},SQ8'
        else:
            if inner_dim % s['m']:
                raise ValueError(f'index.m={s["m"]} (PQ sub-quantizers) must divide the dimension {inner_dim}')
            body = f'{ivf},PQ{s["m"]}x{s["nbits"]}'
    return prefix + body + _REFINE[s['refine']]


def _walk(index):
    """The index and every index it wraps (pre-transform, refine, IVF quantizer)."""
    faiss = _faiss()
    out, todo = [], [index]
    while todo:
        ix = faiss.downcast_index(todo.pop())
        out.append(ix)
        if isinstance(ix, faiss.IndexPreTransform):
            todo.append(ix.index)
        elif isinstance(ix, faiss.IndexRefine):
            todo += [ix.base_index, ix.refine_index]
        elif isinstance(ix, faiss.IndexIVF):
            todo.append(ix.quantizer)
        elif isinstance(ix, faiss.IndexHNSW):
            todo.append(ix.storage)
    return out


def structure(index) -> Tuple[str, ...]:
    """Class names of the index and the indexes it wraps (compared on load against the saved spec)."""
    names = (type(ix).__name__ for ix in _walk(index))
    return tuple('IndexFlat' if n in ('IndexFlatIP', 'IndexFlatL2') else n for n in names)


def build_index(spec: Dict, dim: int):
    """An empty (untrained where needed) FAISS index for a validated spec, inner-product metric."""
    faiss = _faiss()
    fs = factory_string(spec, dim)
    try:
        index = faiss.index_factory(int(dim), fs, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f'faiss cannot build index {fs!r} for {dim}-d descriptors: '
                         f'{str(e).strip().splitlines()[-1]}') from e
    for ix in _walk(index):
        if isinstance(ix, faiss.IndexPreTransform):
            for i in range(ix.chain.size()):
                vt = faiss.downcast_VectorTransform(ix.chain.at(i))
                if isinstance(vt, faiss.OPQMatrix) and spec.get('opq_niter'):
                    vt.niter = int(spec['opq_niter'])      # FAISS default 50 alternations of PQ / rotation
        if isinstance(ix, faiss.IndexHNSW) and spec.get('efConstruction'):
            ix.hnsw.efConstruction = int(spec['efConstruction'])
        if isinstance(ix, faiss.IndexIVF):
            ix.cp.seed = int(spec['seed'])
        if isinstance(ix, (faiss.IndexPQ, faiss.IndexIVFPQ)):
            ix.pq.cp.seed = int(spec['seed'])
            # polysemous codes only serve Hamming-filtered search (not used here) and train slowly (annealing)
            ix.do_polysemous_training = False
    set_search_params(index, spec)
    return index


def set_search_params(index, spec: Dict) -> None:
    """Apply ``nprobe`` / ``efSearch`` / ``k_factor`` with FAISS's ``ParameterSpace`` (it reaches wrapped indexes);
    keys that do not apply to the index are ignored."""
    faiss = _faiss()
    ps = faiss.GpuParameterSpace() if _is_gpu(index) else faiss.ParameterSpace()
    names = dict(nprobe='nprobe', efSearch='efSearch', k_factor='k_factor_rf')
    for key, val in search_params(spec).items():
        try:
            ps.set_index_parameter(index, names[key], float(val))
        except RuntimeError:   # e.g. efSearch on an IVF index with a flat quantizer
            pass


def _is_gpu(index) -> bool:
    return 'Gpu' in type(index).__name__


def min_train_size(spec: Dict, dim: int) -> int:
    """Fewest training descriptors the index accepts (k-means needs >= nlist points, PQ >= 2**nbits)."""
    faiss = _faiss()
    index = build_index(spec, dim)
    need = 1 if not index.is_trained else 0
    for ix in _walk(index):
        if isinstance(ix, faiss.IndexIVF):
            need = max(need, ix.nlist)
        if isinstance(ix, (faiss.IndexPQ, faiss.IndexIVFPQ)):
            need = max(need, 1 << ix.pq.nbits)
    if spec['pretransform'] == 'opq':
        need = max(need, 256)
    if spec['pretransform'] == 'pca':
        need = max(need, spec['pretransform_dim'])
    return need


def default_train_size(spec: Dict) -> int:
    return spec['train_size'] or max(50 * int(spec.get('nlist') or 0), 100_000)


def train_sample(x: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` rows of ``x`` drawn without replacement with ``seed`` (all rows, in order, when ``size >= len(x)``)."""
    if size >= len(x):
        return x
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size=size, replace=False))
    return x[rows]


def index_nbytes(index) -> int:
    """Bytes held by a (CPU) FAISS index: codes, ids, graph links, quantizer and transform matrices."""
    faiss = _faiss()
    total = 0
    for ix in _walk(index):
        if isinstance(ix, faiss.IndexPreTransform):
            for i in range(ix.chain.size()):
                vt = faiss.downcast_VectorTransform(ix.chain.at(i))
                if isinstance(vt, faiss.LinearTransform):
                    total += 4 * (vt.A.size() + vt.b.size())
        elif isinstance(ix, faiss.IndexHNSW):
            h = ix.hnsw
            total += 4 * h.neighbors.size() + 8 * h.offsets.size() + 4 * h.levels.size()
        elif isinstance(ix, faiss.IndexIVF):
            inv = faiss.downcast_InvertedLists(ix.invlists)
            sizes = [inv.list_size(i) for i in range(inv.nlist)]
            if isinstance(inv, faiss.BlockInvertedLists):     # fast-scan layouts: codes in fixed-size blocks
                total += sum(-(-n // inv.n_per_block) * inv.block_size for n in sizes) + 8 * sum(sizes)
            else:
                total += sum(sizes) * (inv.code_size + 8)
            total += 16 * inv.nlist
            if isinstance(ix, faiss.IndexIVFPQ):
                total += 4 * ix.pq.centroids.size()
                if ix.use_precomputed_table:
                    total += 4 * ix.precomputed_table.size()
        elif isinstance(ix, (faiss.IndexFlatCodes, )):
            total += ix.ntotal * ix.code_size
            if isinstance(ix, faiss.IndexPQ):
                total += 4 * ix.pq.centroids.size()
        elif isinstance(ix, faiss.IndexRefine):
            pass
        else:  # pragma: no cover - an index type this function does not know: FAISS's serialized size
            return int(faiss.serialize_index(index).size)
    return int(total)
