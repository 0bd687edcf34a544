"""MaO approximate FAISS indexes: every index type built from the config dict finds the exact neighbours of
clustered data (recall@10 bound), save / reload keeps results and refuses mismatching files or settings with an error
naming the file, and searches above faiss-gpu's k limit (2048) go to the CPU copy."""
import json
import os.path as osp
import warnings

import numpy as np
import pytest

faiss = pytest.importorskip('faiss')

from queryvision_mm.utils.ann_index import index_nbytes, index_spec  # noqa: E402
from queryvision_mm.utils.descriptor_index import DescriptorIndex  # noqa: E402


def clustered(n=3000, n_queries=40, dim=32, seed=0):
    """Gaussian mixture with 60 anisotropic clusters of varying spread; queries near gallery items."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((60, dim)) * np.linspace(1.5, 0.3, dim)
    spread = rng.uniform(0.2, 0.6, 60)
    lab = rng.integers(0, 60, n)
    g = centres[lab] + spread[lab, None] * rng.standard_normal((n, dim)) * np.linspace(1.0, 0.4, dim)
    src = rng.choice(n, n_queries, replace=False)
    q = g[src] + 0.05 * rng.standard_normal((n_queries, dim))
    return g.astype(np.float32), q.astype(np.float32)


def recall_at(ids, truth):
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / len(b) for a, b in zip(ids, truth)]))


@pytest.fixture(scope='module')
def data():
    g, q = clustered()
    exact = DescriptorIndex(g.shape[1])
    exact.add(g, [f'g{i}' for i in range(len(g))])
    return g, q, exact.search(q, 10)[1]


SPECS = [   # (spec, recall@10 lower bound)
    (dict(type='hnsw', M=16, efConstruction=40, efSearch=64), 0.95),
    (dict(type='hnsw', M=16, storage='SQ8', efSearch=64), 0.85),
    (dict(type='ivf_flat', nlist=16, nprobe=4), 0.9),
    (dict(type='ivf_sq8', nlist=16, nprobe=4, quantizer='hnsw'), 0.85),
    (dict(type='ivf_pq', nlist=16, nprobe=4, m=8, nbits=6), 0.2),     # PQ alone: coarse (random: 0.003)
    (dict(type='ivf_pq', nlist=16, nprobe=4, m=8, nbits=6, refine='flat', k_factor=8), 0.9),
    (dict(type='ivf_sq8', nlist=16, nprobe=4, pretransform='pca', pretransform_dim=16), 0.4),
    (dict(type='factory', factory='IVF16,PQ8x4fs,RFlat', nprobe=4, k_factor=16), 0.85),
]


@pytest.mark.parametrize('spec,bound', SPECS, ids=[s['type'] + str(i) for i, (s, _) in enumerate(SPECS)])
def test_index_types_find_exact_neighbours(data, spec, bound):
    g, q, truth = data
    index = DescriptorIndex(g.shape[1], **spec)
    index.add(g, [f'g{i}' for i in range(len(g))])
    scores, ids = index.search(q, 10)
    r = recall_at(ids, truth)
    assert r >= bound, f'{index.factory}: recall@10 {r:.3f} < {bound}'
    assert index.trained_on in (0, len(g)) and not index.is_exact
    assert np.all(np.diff(scores, axis=1) <= 1e-6), 'descending (approximate) cosine scores'
    # memory accounting agrees with FAISS's own serialisation of the index
    assert abs(index_nbytes(index.cpu_index) - faiss.serialize_index(index.cpu_index).size) < 0.06 * \
        faiss.serialize_index(index.cpu_index).size + 4096


def test_opq_and_seeded_training_sample(data):
    g, q, truth = data
    spec = dict(type='ivf_pq', nlist=8, nprobe=8, m=8, nbits=4, pretransform='opq', opq_niter=1, refine='sq8',
                k_factor=8, train_size=700, seed=3)
    a = DescriptorIndex(g.shape[1], **spec)
    a.add(g, [f'g{i}' for i in range(len(g))])
    b = DescriptorIndex(g.shape[1], **spec)
    b.add(g, [f'g{i}' for i in range(len(g))])
    assert a.factory == 'OPQ8_32,IVF8,PQ8x4,Refine(SQ8)' and a.trained_on == 700
    assert np.array_equal(a.search(q, 10)[1], b.search(q, 10)[1]), 'same seed, same sample, same index'
    assert recall_at(a.search(q, 10)[1], truth) >= 0.8


def test_spec_errors():
    with pytest.raises(ValueError, match='index.nprobe is not a setting of index type .flat.'):
        DescriptorIndex(16, nprobe=4)
    with pytest.raises(ValueError, match="index.type='annoy'"):
        DescriptorIndex(16, type='annoy')
    with pytest.raises(ValueError, match='index.m=5 .* must divide the dimension 16'):
        DescriptorIndex(16, type='ivf_pq', m=5)
    with pytest.raises(ValueError, match='index.nlist=0 must be a positive integer'):
        index_spec(type='ivf_sq8', nlist=0)
    with pytest.raises(ValueError, match='index.k_factor .* needs index.refine'):
        index_spec(type='ivf_pq', k_factor=8)
    index = DescriptorIndex(16, type='ivf_sq8', nlist=64)
    with pytest.raises(ValueError, match="needs at least 64 training descriptors, got 12.*index.type=\"flat\""):
        index.add(np.ones((12, 16), np.float32) + np.eye(12, 16, dtype=np.float32), [str(i) for i in range(12)])


def test_save_reload_and_checks(data, tmp_path):
    g, q, _ = data
    paths = [f'g{i}' for i in range(len(g))]
    spec = dict(type='ivf_sq8', nlist=16, nprobe=2)
    index = DescriptorIndex(g.shape[1], **spec)
    index.add(g, paths)
    index.meta['model'] = 'abc'
    out = str(tmp_path / 'idx')
    index.save(out)
    again = DescriptorIndex.load(out, **spec)
    assert np.array_equal(again.search(q, 10)[1], index.search(q, 10)[1]) and again.paths == paths
    assert again.meta == {'model': 'abc'} and again.spec == index.spec
    # search-time settings may change at load time and afterwards; the result changes with them
    wide = DescriptorIndex.load(out, **dict(spec, nprobe=16))
    assert faiss.extract_index_ivf(wide.cpu_index).nprobe == 16
    wide.set_search_params(nprobe=1)
    assert faiss.extract_index_ivf(wide.cpu_index).nprobe == 1
    assert DescriptorIndex.load(out).spec['nprobe'] == 2, 'no config: the saved settings'
    # the descriptors' fingerprint
    again.check_descriptors(g, paths)
    with pytest.raises(ValueError, match='descriptors fingerprint .* does not match'):
        again.check_descriptors(g[::-1], paths)
    with pytest.raises(ValueError, match='ids fingerprint'):
        again.check_descriptors(g, paths[::-1])
    meta_file, idx_file = osp.join(out, 'index_meta.json'), osp.join(out, 'index.faiss')
    # a config asking for other build settings
    with pytest.raises(ValueError, match=r'index_meta.json: the index was built as .IVF16,SQ8.*nlist: saved 16 != '
                                         r'config 32'):
        DescriptorIndex.load(out, **dict(spec, nlist=32))
    with pytest.raises(ValueError, match=r"index_meta.json.*type: saved 'ivf_sq8' != config 'flat'"):
        DescriptorIndex.load(out, use_gpu=False, type='flat')
    # index.faiss replaced by another build (same size and type, other data)
    other = DescriptorIndex(g.shape[1], **spec)
    other.add(g[::-1], paths)
    other.save(str(tmp_path / 'other'))
    good = open(idx_file, 'rb').read()
    open(idx_file, 'wb').write(open(str(tmp_path / 'other/index.faiss'), 'rb').read())
    with pytest.raises(ValueError, match=r'idx/index.faiss does not match the fingerprint recorded in .*index_meta'):
        DescriptorIndex.load(out)
    open(idx_file, 'wb').write(good)
    # edited gallery paths
    meta = json.load(open(meta_file))
    json.dump(dict(meta, paths=list(reversed(meta['paths']))), open(meta_file, 'w'))
    with pytest.raises(ValueError, match='index_meta.json: the gallery paths do not match their recorded fingerprint'):
        DescriptorIndex.load(out)
    # a count that disagrees, a factory that disagrees with the file, a metric that is not inner product
    json.dump(dict(meta, count=5), open(meta_file, 'w'))
    with pytest.raises(ValueError, match='disagree'):
        DescriptorIndex.load(out)
    json.dump(dict(meta, spec=dict(meta['spec'], type='ivf_flat'), factory='IVF16,Flat'), open(meta_file, 'w'))
    with pytest.raises(ValueError, match=r'index.faiss holds a IndexIVFScalarQuantizer/IndexFlat index but .*'
                                         r"index_meta.json records 'IVF16,Flat'"):
        DescriptorIndex.load(out)
    l2 = faiss.IndexFlatL2(g.shape[1])
    l2.add(g)
    faiss.write_index(l2, idx_file)
    from queryvision_mm.utils.descriptor_index import _sha1_file
    json.dump(dict(meta, index_sha1=_sha1_file(idx_file)), open(meta_file, 'w'))
    with pytest.raises(ValueError, match='index.faiss: metric 1 .* inner product'):
        DescriptorIndex.load(out)
    open(idx_file, 'wb').write(b'garbage')
    json.dump(dict(meta, index_sha1=_sha1_file(idx_file)), open(meta_file, 'w'))
    with pytest.raises(ValueError, match='index.faiss: not a readable FAISS index'):
        DescriptorIndex.load(out)


class FakeGpuIndex:
    """Stands for a faiss-gpu index: answers like the CPU index but, as faiss-gpu, refuses k > 2048."""

    def __init__(self, cpu_index):
        self.cpu_index, self.calls = cpu_index, []

    def search(self, q, k):
        self.calls.append(k)
        if k > 2048:
            raise RuntimeError('Error: k <= GPU_MAX_SELECTION_K failed: GPU index only supports k <= 2048')
        return self.cpu_index.search(q, k)


def test_gpu_search_above_k_limit_uses_cpu_copy():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((3000, 8)).astype(np.float32)
    q = rng.standard_normal((3, 8)).astype(np.float32)
    index = DescriptorIndex(8)
    index.add(g, [str(i) for i in range(3000)])
    cpu = [index.search(q, k) for k in (10, 2500, None)]
    index.use_gpu, index._gpu_index = True, FakeGpuIndex(index.cpu_index)      # as if faiss-gpu were installed
    for k, ref in zip((10, 2500, None), cpu):
        s, i = index.search(q, k)
        assert np.array_equal(i, ref[1]) and np.array_equal(s, ref[0])
    assert index._gpu_index.calls == [10], 'k <= 2048 on the GPU, larger k on the CPU copy'


def test_gpu_clone_failure_falls_back_to_cpu(monkeypatch):
    def no_gpu_hnsw(res, device, index):
        raise RuntimeError('not implemented for IndexHNSWFlat')
    monkeypatch.setattr(faiss, 'StandardGpuResources', lambda: object(), raising=False)
    monkeypatch.setattr(faiss, 'index_cpu_to_gpu', no_gpu_hnsw, raising=False)
    monkeypatch.setattr(faiss, 'get_num_gpus', lambda: 1)
    index = DescriptorIndex(8, use_gpu=True, type='hnsw', M=8)
    assert index.use_gpu
    index.add(np.eye(8, dtype=np.float32) + 0.1, [str(i) for i in range(8)])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        _, ids = index.search(np.eye(8, dtype=np.float32)[:2], 3)
    assert ids[:, 0].tolist() == [0, 1] and not index.use_gpu and 'searching on the CPU' in str(w[0].message)


def test_search_tool_index_flags(data, tmp_path):
    import importlib.util
    repo = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    spec = importlib.util.spec_from_file_location('qv_mao_search_tool', osp.join(repo, 'tools/mao/search.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    g, q, _ = data
    cfg_index = dict(type='hnsw', M=8, efSearch=16, use_gpu=True)
    built = DescriptorIndex(g.shape[1], **{k: v for k, v in cfg_index.items() if k != 'use_gpu'})
    built.add(g, [f'g{i}' for i in range(len(g))])
    built.save(str(tmp_path / 'idx'))
    settings = tool.index_settings(cfg_index, ef_search=200, cpu=True)
    assert settings == dict(type='hnsw', M=8, efSearch=200, use_gpu=False) and cfg_index['efSearch'] == 16
    loaded = DescriptorIndex.load(str(tmp_path / 'idx'), **settings)
    assert loaded.cpu_index.hnsw.efSearch == 200 and not loaded.use_gpu
    with pytest.raises(ValueError, match='index.nprobe is not a setting of index type .hnsw.'):
        DescriptorIndex.load(str(tmp_path / 'idx'), **tool.index_settings(cfg_index, nprobe=8))
