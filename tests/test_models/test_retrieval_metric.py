"""Retrieval mAP / Recall@K against hand-computed rankings (ties, a query without relevant images, -1 padding) and
the FAISS descriptor index (same rankings as exact NumPy search, save/load round trip, bad input named)."""
import numpy as np
import pytest
import torch

from queryvision_mm.evaluation.metrics import (QVSmallObjectRetrievalMetric, average_precision_from_ranking,
                                               rank_gallery, relevance_matrix, retrieval_metrics)

DEFAULT_SCOPE = 'mmpretrain'


def test_average_precision_hand_computed():
    # relevant at ranks 1, 3, 6: (1/1 + 2/3 + 3/6) / 3
    assert average_precision_from_ranking([1, 0, 1, 0, 0, 1]) == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    assert average_precision_from_ranking([0, 0, 0]) == 0.0
    assert average_precision_from_ranking([0, 1]) == pytest.approx(0.5)


def test_metrics_with_ties_and_unanswerable_query():
    gallery = np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)   # images 0 and 1 tie for query 0
    gallery_ins = [[5, -1], [7], [9, 5], [-1]]
    queries = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    query_ins = [7, 5, 3]                   # instance 3 is in no gallery image
    rankings = rank_gallery(queries, gallery)
    assert rankings[0].tolist() == [0, 1, 3, 2], 'a tie keeps gallery order'
    assert rankings[1].tolist() == [2, 3, 0, 1]
    rel = relevance_matrix(query_ins, gallery_ins)
    assert rel.tolist() == [[False, True, False, False], [True, False, True, False], [False] * 4]
    m = retrieval_metrics(rankings, rel, ks=(1, 2))
    ap0 = 1 / 2                                  # instance 7 at rank 2
    ap1 = (1 / 1 + 2 / 3) / 2                    # instance 5: image 2 at rank 1, image 0 at rank 3
    assert m['mAP'] == pytest.approx(100 * (ap0 + ap1 + 0) / 3)
    assert m['R@1'] == pytest.approx(100 / 3) and m['R@2'] == pytest.approx(200 / 3)
    assert m['queries_without_relevant'] == 1 and m['num_queries'] == 3


def test_metric_class_and_errors():
    metric = QVSmallObjectRetrievalMetric(topk=(1, ))
    samples = [dict(descriptor=torch.tensor([1., 0.]), is_query=False, instances=[1, 2]),
               dict(descriptor=torch.tensor([0., 1.]), is_query=False, instances=[3]),
               dict(descriptor=torch.tensor([0., 1.]), is_query=True, instances=[3]),
               dict(descriptor=torch.tensor([0.1, 0.9]), is_query=True, instances=[2])]
    metric.process(None, samples)
    out = metric.evaluate(4)
    assert out['retrieval/mAP'] == pytest.approx(100 * (1 + 0.5) / 2) and out['retrieval/R@1'] == 50.0
    metric.process(None, samples[2:])
    with pytest.raises(ValueError, match='gallery is empty'):
        metric.evaluate(2)
    with pytest.raises(ValueError, match='no queries'):
        retrieval_metrics(np.zeros((0, 2), dtype=int), np.zeros((0, 2), dtype=bool))


def test_faiss_index_round_trip(tmp_path):
    pytest.importorskip('faiss')
    from queryvision_mm.utils.descriptor_index import DescriptorIndex
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((50, 16)).astype(np.float32)
    queries = rng.standard_normal((5, 16)).astype(np.float32)
    index = DescriptorIndex(16)
    index.add(gallery[:30], [f'g{i}.jpg' for i in range(30)])
    index.add(gallery[30:], [f'g{i}.jpg' for i in range(30, 50)])
    scores, ids = index.search(queries)
    unit = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    assert ids.tolist() == rank_gallery(queries / np.linalg.norm(queries, axis=1, keepdims=True), unit).tolist()
    index.meta['encoder'] = 'tiny'
    index.save(str(tmp_path / 'idx'))
    again = DescriptorIndex.load(str(tmp_path / 'idx'))
    s2, i2 = again.search(queries)
    assert np.array_equal(i2, ids) and np.array_equal(s2, scores) and again.paths == index.paths
    assert again.meta == {'encoder': 'tiny'} and len(again.search(queries, k=3)[1][0]) == 3
    with pytest.raises(ValueError, match='empty'):
        DescriptorIndex(16).search(queries)
    with pytest.raises(ValueError, match='descriptor 1 is all zeros'):
        index.add(np.stack([gallery[0], np.zeros(16, np.float32)]), ['a', 'b'])
    with pytest.raises(ValueError, match='2 descriptors but 1 paths'):
        index.add(gallery[:2], ['a'])
    (tmp_path / 'idx/index_meta.json').write_text('{"dim": 16, "count": 3, "paths": ["a", "b", "c"]}')
    with pytest.raises(ValueError, match='disagree'):
        DescriptorIndex.load(str(tmp_path / 'idx'))
    with pytest.raises(FileNotFoundError, match='index.faiss'):
        DescriptorIndex.load(str(tmp_path / 'nope'))
