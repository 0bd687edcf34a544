"""Streaming retrieval evaluation (MaO mAP / Recall@K over gallery chunks) equals the dense reference exactly --
ties, multi-object gallery images, -1 padding, queries without a relevant image -- and never holds a queries x
gallery matrix (block shapes through the chunk API, peak allocation through tracemalloc)."""
import tracemalloc

import numpy as np
import pytest

from queryvision_mm.evaluation.metrics import retrieval
from queryvision_mm.evaluation.metrics.retrieval import (QVSmallObjectRetrievalMetric, rank_gallery, relevance_matrix,
                                                         retrieval_metrics, streaming_retrieval_metrics,
                                                         streaming_topk)

DEFAULT_SCOPE = 'mmpretrain'


def _exact_data(rng, n_gallery, n_query, dim=8):
    """Entries in {-0.75, ..., 0.75} step 0.25: every inner product is exact in float32 whatever the summation
    order, so dense and blocked products agree bit for bit and ties are frequent."""
    g = (rng.integers(-3, 4, (n_gallery, dim)) / 4).astype(np.float32)
    q = (rng.integers(-3, 4, (n_query, dim)) / 4).astype(np.float32)
    # several objects per gallery image (instance lists, -1 padding, some empty); instances 10, 11 are never present
    gi = [list(rng.choice(10, int(rng.integers(0, 4)), replace=False)) + [-1] * int(rng.integers(0, 2))
          for _ in range(n_gallery)]
    qi = [int(i) for i in rng.integers(0, 12, n_query)]
    return q, g, qi, gi


def test_streaming_equals_dense_exactly():
    rng = np.random.default_rng(1)
    for trial in range(12):
        q, g, qi, gi = _exact_data(rng, int(rng.integers(1, 250)), int(rng.integers(1, 30)))
        ref = retrieval_metrics(rank_gallery(q, g), relevance_matrix(qi, gi), (1, 3, 10))
        for chunk, qchunk in [(1, 1), (7, 3), (64, 5), (10_000, 1_000)]:
            assert streaming_retrieval_metrics(q, g, qi, gi, (1, 3, 10), chunk, qchunk) == ref, (trial, chunk)
        _, top = streaming_topk(q, g, 5, chunk_size=7, query_chunk=4)
        assert np.array_equal(top, rank_gallery(q, g)[:, :5]), 'top-k keeps the stable tie order'
    # tie at the head: all gallery images identical -> ranks follow gallery order
    g = np.ones((6, 4), np.float32)
    m = streaming_retrieval_metrics(np.ones((1, 4), np.float32), g, [3], [[0], [1], [3], [2], [3], [-1]], (1, 3),
                                    chunk_size=2, query_chunk=1)
    assert m['mAP'] == pytest.approx(100 * (1 / 3 + 2 / 5) / 2) and m['R@1'] == 0 and m['R@3'] == 100
    # ordinary float descriptors, one block: identical to the dense computation
    gf = rng.standard_normal((300, 16)).astype(np.float32)
    qf = rng.standard_normal((20, 16)).astype(np.float32)
    gi = [[int(i)] for i in rng.integers(0, 5, 300)]
    qi = [int(i) for i in rng.integers(0, 5, 20)]
    assert streaming_retrieval_metrics(qf, gf, qi, gi) == retrieval_metrics(rank_gallery(qf, gf),
                                                                            relevance_matrix(qi, gi))
    with pytest.raises(ValueError, match='3 gallery descriptors but 2 gallery instance lists'):
        streaming_retrieval_metrics(qf[:1], gf[:3], [0], [[0], [1]])


def test_metric_class_streams_and_matches_dense():
    rng = np.random.default_rng(2)
    q, g, qi, gi = _exact_data(rng, 120, 15)
    metric = QVSmallObjectRetrievalMetric(topk=(1, 5), chunk_size=16, query_chunk=4)
    samples = [dict(descriptor=d, is_query=False, instances=i) for d, i in zip(g, gi)]
    samples += [dict(descriptor=d, is_query=True, instances=[i]) for d, i in zip(q, qi)]
    metric.process(None, samples)
    out = metric.evaluate(len(samples))
    ref = retrieval_metrics(rank_gallery(q, g), relevance_matrix(qi, gi), (1, 5))
    assert out['retrieval/mAP'] == ref['mAP'] and out['retrieval/R@5'] == ref['R@5']


def test_memory_bounded_by_chunk(monkeypatch):
    rng = np.random.default_rng(3)
    n_q, n_g, chunk, qchunk = 400, 20_000, 1024, 32
    g = rng.standard_normal((n_g, 16)).astype(np.float32)
    q = rng.standard_normal((n_q, 16)).astype(np.float32)
    gi = [[int(i)] for i in rng.integers(0, 200, n_g)]
    qi = [int(i) for i in rng.integers(0, 200, n_q)]
    shapes = []
    real = retrieval.iter_score_blocks

    def spy(*args, **kwargs):
        for g0, g1, s in real(*args, **kwargs):
            shapes.append(s.shape)
            yield g0, g1, s
    monkeypatch.setattr(retrieval, 'iter_score_blocks', spy)
    tracemalloc.start()
    try:
        streaming_retrieval_metrics(q, g, qi, gi, chunk_size=chunk, query_chunk=qchunk)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        metric = QVSmallObjectRetrievalMetric(chunk_size=chunk, query_chunk=qchunk)
        metric.results = [dict(descriptor=d, is_query=False, instances=i) for d, i in zip(g, gi)] + \
                         [dict(descriptor=d, is_query=True, instances=[i]) for d, i in zip(q, qi)]
        base, _ = tracemalloc.get_traced_memory()
        metric.compute_metrics(metric.results)
        _, peak_metric = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert shapes and max(s[0] for s in shapes) <= qchunk and max(s[1] for s in shapes) <= chunk
    dense = n_q * n_g * 4          # one float32 Q x G score matrix (the dense path also holds int64 rankings)
    assert peak < dense / 4, f'{peak} bytes at peak: a Q x G matrix ({dense} bytes) was built'
    assert peak_metric - base < dense / 4, f'the metric class allocated {peak_metric - base} bytes'
