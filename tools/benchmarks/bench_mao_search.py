"""MaO search at scale: exact vs approximate FAISS indexes on clustered 768-d descriptors (build, memory, latency,
throughput, recall@100 against exact search), plus a compressed-index scaling run towards 10M descriptors.

    python tools/benchmarks/bench_mao_search.py [--n 1000000] [--dim 768] [--queries 1000] [--latency-queries 200]
        [--indexes flat hnsw ivf_sq8 ivf_pq ivf_pq_fs_rf] [--threads 2] [--centres 4000] [--seed 0]
        [--scaling 1000000 2000000 5000000 10000000 --mem-gb 12] [--json OUT.json] [--write docs/benchmarks.md]
    python tools/benchmarks/bench_mao_search.py --render OUT.json [--write docs/benchmarks.md]   # tables only

Data (``ClusteredDescriptors``): a mixture of ``--centres`` Gaussian clusters with log-normal weights; centres are
correlated (a decaying spectrum in a random 128-d subspace plus an isotropic part); each cluster has its own spread
(log-uniform 0.25-0.8 relative to the centre) and its own anisotropy (per-cluster log-normal scales on a shared random
64-d basis with a decaying spectrum) plus full-rank isotropic noise (uniform); every vector is L2-normalised.
Queries are gallery items plus fresh noise of 0.4x their cluster's spread (near, never identical). Chunks are
generated from per-chunk seeds, so nothing holds the whole gallery except the index under test (1M x 768 float32 =
2.9 GiB).

Per index (``DescriptorIndex`` with the config dict an MaO config would use), every search setting of its sweep:
build time (train on a seeded sample + add; generation excluded), memory (``index_nbytes``: codes, ids, graph,
quantiser, transforms), single-query p50 / p99 latency (``--latency-queries`` queries one at a time, after a warm-up),
batched throughput (all ``--queries`` in one call) and recall@100 against exact ``IndexFlatIP`` top-100.
``faiss.omp_set_num_threads(--threads)``.

Index names, optionally with overrides ``name:key=v,key=v1/v2`` (``/`` = sweep of a search setting): ``flat``,
``hnsw`` (HNSW32), ``hnsw_sq8``, ``ivf_sq8``, ``ivf_pq`` (PQ dim/8 x 8 bits), ``ivf_pq_rf`` (+ SQ8 re-ranking),
``ivf_pq_fs_rf`` (4-bit fast-scan PQ + SQ8 re-ranking), ``opq_ivf_pq_rf``; ``nlist`` defaults to the power of two
nearest 2 sqrt(N) and ``quantizer='hnsw'`` (HNSW over the centroids).

``--scaling``: one compressed index (``--scaling-index``, default ``ivf_pq_fs_rf`` with nlist 4096, trained once)
grown chunk by chunk; at each size in the list: memory, latency, recall@100 against an exact top-100 kept up to date
chunk by chunk (``faiss.knn`` per chunk, merged). It stops before a size whose projected index memory exceeds
``--mem-gb``, and reports the largest size that fit. (Exact re-ranking from float32 vectors, ``refine=flat``,
needs 3 KiB per vector: 30 GB at 10M.)
"""
import argparse
import itertools
import json
import math
import os.path as osp
import platform
import resource
import sys
import time

import numpy as np

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
sys.path.insert(0, osp.join(REPO, 'tools', 'benchmarks'))
sys.path.insert(0, REPO)
K = 100


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n', type=int, default=1_000_000, help='gallery size')
    p.add_argument('--dim', type=int, default=768)
    p.add_argument('--queries', type=int, default=1000, help='queries for recall and batched throughput')
    p.add_argument('--latency-queries', type=int, default=200, help='queries timed one at a time')
    p.add_argument('--indexes', nargs='*', default=['flat', 'hnsw', 'ivf_sq8', 'ivf_pq', 'ivf_pq_fs_rf'],
                   help='index names (see above); none (a bare --indexes) = only the scaling run')
    p.add_argument('--threads', type=int, default=2, help='faiss.omp_set_num_threads')
    p.add_argument('--centres', type=int, default=4000)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--chunk', type=int, default=50_000, help='descriptors generated / added at a time')
    p.add_argument('--scaling', type=int, nargs='*', default=None, help='gallery sizes for the scaling run')
    p.add_argument('--scaling-index', default='ivf_pq_fs_rf:nlist=4096,nprobe=32,k_factor=4')
    p.add_argument('--mem-gb', type=float, default=12.0, help='index memory budget of the scaling run')
    p.add_argument('--json', default=None, help='write all measurements here')
    p.add_argument('--write', default=None, help='markdown file to update (sections "mao_search", '
                                                 '"mao_search_scaling" between markers)')
    p.add_argument('--render', default=None, metavar='JSON', help='no measurement: print / --write the tables of '
                                                                  'a --json file of an earlier run')
    return p.parse_args(argv)


class ClusteredDescriptors:
    """Deterministic clustered, anisotropic, L2-normalised descriptors, generated chunk by chunk (see module doc)."""

    def __init__(self, dim: int, n_centres: int, seed: int, chunk: int = 50_000) -> None:
        rng = np.random.default_rng([seed, 0])
        self.dim, self.seed, self.chunk = dim, seed, chunk
        rc, self.rank = min(128, dim), min(64, dim)
        basis_c = np.linalg.qr(rng.standard_normal((dim, rc)))[0].T             # rc orthonormal rows
        low = (rng.standard_normal((n_centres, rc)) * (1 + np.arange(rc)) ** -0.5) @ basis_c
        iso = rng.standard_normal((n_centres, dim)) / math.sqrt(dim)
        c = low / np.linalg.norm(low, axis=1, keepdims=True) + 0.7 * iso / np.linalg.norm(iso, axis=1, keepdims=True)
        self.centres = (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)
        w = rng.lognormal(0.0, 1.0, n_centres)
        self.weights = w / w.sum()
        self.spread = np.exp(rng.uniform(np.log(0.25), np.log(0.8), n_centres)).astype(np.float32)
        self.basis = np.linalg.qr(rng.standard_normal((dim, self.rank)))[0].T.astype(np.float32)   # rank x dim
        scale = (1 + np.arange(self.rank)) ** -0.5 * rng.lognormal(0.0, 0.5, (n_centres, self.rank))
        self.iso = 0.5                                                          # share of full-rank noise
        norm = np.sqrt((scale ** 2).sum(1) + self.iso ** 2)
        self.scale = (scale / norm[:, None]).astype(np.float32)
        self.iso_scale = (self.iso / norm).astype(np.float32)

    def _noise(self, rng, lab):
        """Gaussian on the 64-d basis (per-cluster scales) + full-rank noise (uniform, unit variance per dimension:
        8x cheaper to draw than Gaussian and just as isotropic in norm), [len(lab), dim] float32."""
        z = rng.standard_normal((len(lab), self.rank), dtype=np.float32)
        z *= self.scale[lab]
        out = z @ self.basis
        u = rng.random((len(lab), self.dim), dtype=np.float32)
        u -= 0.5
        u *= (self.iso_scale[lab] * math.sqrt(12.0 / self.dim))[:, None]
        out += u
        return out

    def chunk_at(self, i: int, size: int):
        """(descriptors [size, dim] float32, cluster labels) of chunk i."""
        rng = np.random.default_rng([self.seed, i + 1])
        lab = rng.choice(len(self.centres), size=size, p=self.weights)
        x = self.centres[lab] + self.spread[lab, None] * self._noise(rng, lab)
        return x / np.linalg.norm(x, axis=1, keepdims=True), lab

    def chunks(self, n: int):
        for i, g0 in enumerate(range(0, n, self.chunk)):
            yield g0, self.chunk_at(i, min(self.chunk, n - g0))[0]

    def queries(self, n_queries: int, n: int):
        """Queries near random gallery items of chunk 0 (in every gallery prefix)."""
        x, lab = self.chunk_at(0, min(self.chunk, n))
        rng = np.random.default_rng([self.seed, 10 ** 6])
        src = rng.choice(len(x), size=n_queries, replace=n_queries > len(x))
        q = x[src] + 0.4 * self.spread[lab[src], None] * self._noise(rng, lab[src])
        return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def auto_nlist(n: int) -> int:
    return int(2 ** round(math.log2(max(2 * math.sqrt(n), 16))))


def presets(n: int, dim: int):
    """name -> (index spec, {search key: sweep values})."""
    nl = auto_nlist(n)
    m = dim // 8
    ivf = dict(nlist=nl, quantizer='hnsw', train_size=min(n, max(40 * nl, 50_000)))
    return {
        'flat': (dict(type='flat'), {}),
        'hnsw': (dict(type='hnsw', M=32, efConstruction=64), dict(efSearch=[64, 128, 256, 512])),
        'hnsw_sq8': (dict(type='hnsw', M=32, efConstruction=64, storage='SQ8'), dict(efSearch=[128, 256, 512])),
        'ivf_sq8': (dict(type='ivf_sq8', **ivf), dict(nprobe=[16, 32, 64, 128, 256])),
        'ivf_pq': (dict(type='ivf_pq', m=m, nbits=8, **ivf), dict(nprobe=[16, 32, 64])),
        'ivf_pq_rf': (dict(type='ivf_pq', m=m, nbits=8, refine='sq8', **ivf), dict(nprobe=[32, 64, 128],
                                                                                   k_factor=[4])),
        # 4-bit fast-scan PQ (SIMD lookups) + SQ8 re-ranking; the factory string is made in parse_index (nlist)
        'ivf_pq_fs_rf': (dict(type='factory', factory='IVF{nlist}_HNSW32,PQ%dx4fs,Refine(SQ8)' % m,
                              train_size=ivf['train_size'], nlist=nl),
                         dict(nprobe=[32, 64, 128], k_factor=[4, 8, 16])),
        'opq_ivf_pq_rf': (dict(type='ivf_pq', m=m, nbits=8, refine='sq8', pretransform='opq', opq_niter=10, **ivf),
                          dict(nprobe=[32, 64], k_factor=[4])),
    }


def _value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return None if v == 'None' else v


def parse_index(arg: str, n: int, dim: int):
    """``name[:key=v,key=v1/v2]`` -> (name, spec, sweep)."""
    name, _, over = arg.partition(':')
    table = presets(n, dim)
    if name not in table:
        raise SystemExit(f'unknown index {name!r}; one of {sorted(table)}')
    spec, sweep = dict(table[name][0]), dict(table[name][1])
    for item in filter(None, over.split(',')):
        key, _, val = item.partition('=')
        vals = [_value(v) for v in val.split('/')]
        if key in ('nprobe', 'efSearch', 'k_factor'):
            sweep[key] = vals
        else:
            spec[key] = vals[0]
    if spec['type'] == 'factory' and 'nlist' in spec:
        spec['factory'] = spec['factory'].format(nlist=spec.pop('nlist'))
    return name, spec, sweep


def _rss_gib() -> float:
    saved = getattr(_rss_gib, 'saved', None)      # --render: the peak of the measured run
    return saved if saved is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def _current_rss_gib() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 30


def build(spec, data, n, dim):
    from queryvision_mm.utils.descriptor_index import DescriptorIndex
    index = DescriptorIndex(dim, **spec)
    t_train = c_train = 0.0
    if not index.cpu_index.is_trained:
        size = spec.get('train_size') or n
        sample = np.concatenate([x for _, x in itertools.takewhile(lambda c: c[0] < size, data.chunks(n))])[:size]
        t, c = time.perf_counter(), time.process_time()
        index.train(sample)
        t_train, c_train = time.perf_counter() - t, time.process_time() - c
        del sample
    t_add = c_add = 0.0
    for g0, x in data.chunks(n):
        t, c = time.perf_counter(), time.process_time()
        index.add(x, range(g0, g0 + len(x)))
        t_add, c_add = t_add + time.perf_counter() - t, c_add + time.process_time() - c
    index.paths = []       # the benchmark has no gallery paths; keep memory for the index itself
    return index, dict(train_s=t_train, add_s=t_add, train_cpu_s=c_train, add_cpu_s=c_add)


def measure(index, q, truth, latency_queries):
    from queryvision_mm.utils.ann_index import index_nbytes
    for i in range(min(10, len(q))):            # warm-up
        index.search(q[i:i + 1], K)
    lat, cpu = [], []
    for i in range(min(latency_queries, len(q))):
        t, c = time.perf_counter(), time.thread_time()
        index.search(q[i:i + 1], K)
        lat.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
    t, c = time.perf_counter(), time.process_time()
    _, ids = index.search(q, K)
    t_batch, c_batch = time.perf_counter() - t, time.process_time() - c
    recall = float(np.mean([len(np.intersect1d(a[a >= 0], b)) / K for a, b in zip(ids, truth)])) \
        if truth is not None else 1.0
    return dict(p50_ms=float(np.percentile(lat, 50) * 1e3), p99_ms=float(np.percentile(lat, 99) * 1e3),
                p50_cpu_ms=float(np.percentile(cpu, 50) * 1e3), qps=len(q) / t_batch,
                batch_cpu_s=c_batch, recall100=recall, mem_bytes=index_nbytes(index.cpu_index)), ids


def bench_indexes(args, data, q):
    rows, truth = [], None
    names = [parse_index(a, args.n, args.dim) for a in args.indexes]
    if names[0][1]['type'] != 'flat':
        names.insert(0, parse_index('flat', args.n, args.dim))     # exact search first: the ground truth
    for name, spec, sweep in names:
        t0 = time.perf_counter()
        index, times = build(spec, data, args.n, args.dim)
        keys = list(sweep)
        for combo in itertools.product(*[sweep[k] for k in keys]) if keys else [()]:
            params = dict(zip(keys, combo))
            if params:
                index.set_search_params(**params)
            m, ids = measure(index, q, truth, args.latency_queries)
            if truth is None:
                truth = ids
            rows.append(dict(name=name, factory=index.factory, params=params, **times, **m))
            print(json.dumps(rows[-1]), f'(rss {_current_rss_gib():.2f} GiB)', flush=True)
        print(f'{name}: {time.perf_counter() - t0:.0f} s in all', flush=True)
        del index
    return rows


def bench_scaling(args, data, q):
    import faiss

    from queryvision_mm.utils.descriptor_index import DescriptorIndex
    sizes = sorted(args.scaling)
    name, spec, sweep = parse_index(args.scaling_index, sizes[-1], args.dim)
    params = {k: v[0] for k, v in sweep.items()}
    index = DescriptorIndex(args.dim, **spec, **params)
    size = spec.get('train_size') or 100_000
    sample = np.concatenate([x for _, x in itertools.takewhile(lambda c: c[0] < size, data.chunks(sizes[-1]))])
    t = time.perf_counter()
    index.train(sample[:size])
    t_train = time.perf_counter() - t
    del sample
    best_d = np.full((len(q), K), -np.inf, dtype=np.float32)
    best_i = np.full((len(q), K), -1, dtype=np.int64)
    rows, t_add, done, stopped, prev = [], 0.0, 0, None, (0, 0)
    for g0, x in data.chunks(sizes[-1]):
        t = time.perf_counter()
        index.add(x, range(g0, g0 + len(x)))
        t_add += time.perf_counter() - t
        d, i = faiss.knn(q, x, K, metric=faiss.METRIC_INNER_PRODUCT)     # exact top-100 of this chunk
        d, i = np.concatenate([best_d, d], 1), np.concatenate([best_i, i + g0], 1)
        top = np.argsort(-d, axis=1, kind='stable')[:, :K]
        best_d, best_i = np.take_along_axis(d, top, 1), np.take_along_axis(i, top, 1)
        done = g0 + len(x)
        index.paths = []
        if done in sizes:
            m, _ = measure(index, q, best_i, args.latency_queries)
            rows.append(dict(n=done, factory=index.factory, params=params, train_s=t_train, add_s=t_add,
                             rss_gib=_current_rss_gib(), **m))
            print(json.dumps(rows[-1]), flush=True)
            nxt = [s for s in sizes if s > done]
            per_vec = (m['mem_bytes'] - prev[1]) / (done - prev[0])      # marginal bytes per added vector
            projected = m['mem_bytes'] + per_vec * (nxt[0] - done) if nxt else 0
            prev = (done, m['mem_bytes'])
            if nxt and projected > args.mem_gb * 2 ** 30:
                stopped = dict(next=nxt[0], projected_gib=projected / 2 ** 30)
                break
            if not nxt:
                break
    del index
    return rows, stopped


def machine():
    import faiss
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return f'{cpu}, faiss {faiss.__version__}'


def table(args, rows, info):
    ok = [r for r in rows if r['p50_ms'] <= 10 and r['recall100'] >= 0.95 and r['name'] != 'flat']
    ok_cpu = [r for r in rows if r['p50_cpu_ms'] <= 10 and r['recall100'] >= 0.95 and r['name'] != 'flat']
    best = min(ok, key=lambda r: r['p50_ms']) if ok else None
    lines = [f'{args.n:,} clustered descriptors x {args.dim} ({args.centres} anisotropic clusters, see the script), '
             f'{args.queries} queries near gallery items; top-{K}; {args.threads} faiss threads; {info}. Recall@100 '
             f'against exact `IndexFlatIP`; latency = one query per call ({args.latency_queries} queries; "CPU" = '
             'the calling thread\'s CPU time, robust to other load on the machine); throughput = all queries in one '
             'call; memory = the index\'s codes, ids, graph and quantiser.', '',
             '| index (factory) | search setting | build s (train + add) | memory MiB | p50 ms | p99 ms | '
             'p50 CPU ms | batched queries/s | recall@100 |', '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        mark = ' **✓**' if r is best else (' ✓' if r in ok else '')
        setting = ', '.join(f'{k}={v}' for k, v in r['params'].items()) or '-'
        lines.append(f'| `{r["factory"]}` | {setting} | {r["train_s"]:.0f} + {r["add_s"]:.0f} | '
                     f'{r["mem_bytes"] / 2 ** 20:,.0f} | {r["p50_ms"]:.2f} | {r["p99_ms"]:.2f} | '
                     f'{r["p50_cpu_ms"]:.2f} | {r["qps"]:,.0f} | {r["recall100"]:.3f}{mark} |')
    target = (f'Target (p50 ≤ 10 ms at recall@100 ≥ 0.95): met by {len(ok)} setting(s); fastest: '
              f'`{best["factory"]}` {best["params"]} ({best["p50_ms"]:.2f} ms, recall {best["recall100"]:.3f}).'
              if best else 'Target (p50 ≤ 10 ms at recall@100 ≥ 0.95): **not met** by any setting measured.')
    lines += ['', target + f' By thread CPU time: {len(ok_cpu)} setting(s). Peak RSS of the run: {_rss_gib():.1f} '
              'GiB.']
    return '\n'.join(lines)


def scaling_table(args, rows, stopped, info):
    lines = [f'One `{rows[0]["factory"] if rows else args.scaling_index}` index ({rows[0]["params"] if rows else ""})'
             f' grown chunk by chunk, trained once on the first sample; same data generator and queries; {info}.', '',
             '| N | memory MiB | bytes / vector | add s (cumulative) | p50 ms | p99 ms | batched queries/s | '
             'recall@100 | process RSS GiB |', '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f'| {r["n"]:,} | {r["mem_bytes"] / 2 ** 20:,.0f} | {r["mem_bytes"] / r["n"]:.0f} | '
                     f'{r["add_s"]:.0f} | {r["p50_ms"]:.2f} | {r["p99_ms"]:.2f} | {r["qps"]:,.0f} | '
                     f'{r["recall100"]:.3f} | {r["rss_gib"]:.1f} |')
    if stopped:
        lines += ['', f'Stopped before N = {stopped["next"]:,}: projected index memory {stopped["projected_gib"]:.1f} '
                  f'GiB > --mem-gb {args.mem_gb}. Largest size that fit: **{rows[-1]["n"]:,}**.']
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        slope = math.log(b['p50_ms'] / a['p50_ms']) / math.log(b['n'] / a['n'])
        lines += ['', f'p50 latency grows as N^{slope:.2f} from {a["n"]:,} to {b["n"]:,} at fixed nprobe.']
    return '\n'.join(lines)


def render(args):
    from bench_semi_detr import write_section
    with open(args.render) as f:
        out = json.load(f)
    run = argparse.Namespace(**dict(vars(args), **out['args']))
    _rss_gib.saved = out.get('peak_rss_gib')
    for key, md in (('mao_search', table(run, out['rows'], out['machine']) if out.get('rows') else None),
                    ('mao_search_scaling', scaling_table(run, out['scaling'], out.get('scaling_stopped'),
                                                         out['machine']) if out.get('scaling') else None)):
        if md:
            print(md)
            if args.write:
                write_section(args.write, key, md)


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        return render(args)
    import faiss
    faiss.omp_set_num_threads(args.threads)
    from bench_semi_detr import write_section
    data = ClusteredDescriptors(args.dim, args.centres, args.seed, args.chunk)
    info = machine()
    out = dict(args=vars(args), machine=info)
    t0 = time.perf_counter()
    if args.indexes:
        q = data.queries(args.queries, args.n)
        rows = bench_indexes(args, data, q)
        out['rows'] = rows
        md = table(args, rows, info)
        print(md)
        if args.write:
            write_section(args.write, 'mao_search', md)
    if args.scaling:
        q = data.queries(min(args.queries, 200), min(args.scaling))
        srows, stopped = bench_scaling(args, data, q)
        out.update(scaling=srows, scaling_stopped=stopped)
        md = scaling_table(args, srows, stopped, info)
        print(md)
        if args.write:
            write_section(args.write, 'mao_search_scaling', md)
    out['wall_s'] = time.perf_counter() - t0
    out['cpu_s'] = time.process_time()
    out['peak_rss_gib'] = _rss_gib()
    print(f'wall {out["wall_s"]:.0f} s, process CPU {out["cpu_s"]:.0f} s, peak RSS {out["peak_rss_gib"]:.2f} GiB',
          flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == '__main__':
    main()
