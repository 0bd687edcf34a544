"""Small-object image retrieval metrics (MaO / SoIR protocol): mAP over the full ranking and Recall@K.

A gallery image is relevant to a query iff the query's instance id is in the image's instance list. AP of a query =
mean over the relevant gallery images of (relevant images in the top j) / j, j = the rank of each relevant image in
the **full** ranking (non-interpolated); a query with no relevant image in the gallery has AP 0 (and counts in the
mean, as in the official ``calculate_map``); mAP = mean over queries. Recall@K = fraction of queries with at least one
relevant image in the top K. Ties in score are broken by gallery order (stable sort), so a result never depends on
the sort implementation. One descriptor per gallery image is required (a multi-vector gallery would count an image
several times).
"""
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric

from mmpretrain.registry import METRICS


def rank_gallery(query_feats: np.ndarray, gallery_feats: np.ndarray) -> np.ndarray:
    """[Q, G] gallery indices sorted by descending inner product (ties: lower gallery index first)."""
    sims = np.asarray(query_feats, dtype=np.float32) @ np.asarray(gallery_feats, dtype=np.float32).T
    return np.argsort(-sims, axis=1, kind='stable')


def relevance_matrix(query_ins: Sequence[int], gallery_ins: Sequence[Sequence[int]]) -> np.ndarray:
    """[Q, G] bool: query instance in the gallery image's instance list (-1 padding ignored)."""
    sets = [set(int(i) for i in ins if int(i) >= 0) for ins in gallery_ins]
    return np.array([[int(q) in s for s in sets] for q in query_ins], dtype=bool).reshape(len(query_ins), len(sets))


def average_precision_from_ranking(relevant_in_rank_order: np.ndarray) -> float:
    """Non-interpolated AP of one ranked relevance vector; 0 without relevant items."""
    hits = np.asarray(relevant_in_rank_order, dtype=bool)
    if not hits.any():
        return 0.0
    ranks = np.flatnonzero(hits) + 1
    return float((np.arange(1, len(ranks) + 1) / ranks).mean())


def retrieval_metrics(rankings: np.ndarray, relevance: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
    """mAP and Recall@K (in %) from [Q, G] rankings and [Q, G] relevance (gallery-index order)."""
    if rankings.shape != relevance.shape:
        raise ValueError(f'rankings {rankings.shape} and relevance {relevance.shape} differ')
    if rankings.shape[0] == 0:
        raise ValueError('no queries to evaluate')
    ranked = np.take_along_axis(relevance, rankings, axis=1)
    out = {'mAP': 100.0 * float(np.mean([average_precision_from_ranking(r) for r in ranked]))}
    for k in ks:
        out[f'R@{k}'] = 100.0 * float(ranked[:, :k].any(axis=1).mean())
    out['num_queries'] = int(rankings.shape[0])
    out['queries_without_relevant'] = int((~relevance.any(axis=1)).sum())
    return out


@METRICS.register_module()
class QVSmallObjectRetrievalMetric(BaseMetric):
    """mAP / Recall@K for descriptors produced by a retriever's ``predict``.

    Each data sample carries ``descriptor`` (L2-normalised, [D]), ``is_query`` (bool) and ``instances`` (the query's
    instance id as a one-element list, or the gallery image's instance ids). Queries are ranked against every gallery
    descriptor (exhaustive inner product, as the official FAISS ``IndexFlatIP`` search over the whole gallery).
    """
    default_prefix: Optional[str] = 'retrieval'

    def __init__(self, topk: Sequence[int] = (1, 5, 10), collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = tuple(int(k) for k in topk)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for s in data_samples:
            d = s.get('descriptor')
            if d is None:
                raise KeyError('QVSmallObjectRetrievalMetric: a prediction has no "descriptor"')
            self.results.append(dict(descriptor=np.asarray(d.detach().cpu() if hasattr(d, 'detach') else d,
                                                            dtype=np.float32),
                                     is_query=bool(s['is_query']), instances=[int(i) for i in s['instances']],
                                     img_path=s.get('img_path')))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        queries = [r for r in results if r['is_query']]
        gallery = [r for r in results if not r['is_query']]
        if not gallery:
            raise ValueError('QVSmallObjectRetrievalMetric: the gallery is empty')
        if not queries:
            raise ValueError('QVSmallObjectRetrievalMetric: no query images')
        rankings = rank_gallery(np.stack([q['descriptor'] for q in queries]),
                                np.stack([g['descriptor'] for g in gallery]))
        rel = relevance_matrix([q['instances'][0] for q in queries], [g['instances'] for g in gallery])
        return retrieval_metrics(rankings, rel, self.topk)
