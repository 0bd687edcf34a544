"""Small-object image retrieval metrics (MaO / SoIR protocol): mAP over the full ranking and Recall@K.

A gallery image is relevant to a query iff the query's instance id is in the image's instance list. AP of a query =
mean over the relevant gallery images of (relevant images in the top j) / j, j = the rank of each relevant image in
the **full** ranking (non-interpolated); a query with no relevant image in the gallery has AP 0 (and counts in the
mean, as in the official ``calculate_map``); mAP = mean over queries. Recall@K = fraction of queries with at least one
relevant image in the top K. Ties in score are broken by gallery order (stable sort), so a result never depends on
the sort implementation. One descriptor per gallery image is required (a multi-vector gallery would count an image
several times).

Two implementations of the same numbers: the dense reference (``rank_gallery`` + ``relevance_matrix`` +
``retrieval_metrics``: Q x G score, ranking and relevance matrices, for small inputs and tests) and the streaming one
used by the pipeline (``streaming_retrieval_metrics``): the gallery is scored in blocks of ``query_chunk x
chunk_size`` and only the rank of each relevant gallery image is kept -- rank = 1 + #(higher score) + #(equal score at
a lower gallery index), i.e. the position in the stable sort -- so memory is bounded by the block size whatever G is.
The scores of the relevant images are read from the very blocks they are compared in (two passes over the gallery),
so a rank never depends on floating-point differences between two ways of computing one inner product.
"""
from collections import defaultdict
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from mmengine.evaluator import BaseMetric

from mmpretrain.registry import METRICS


def rank_gallery(query_feats: np.ndarray, gallery_feats: np.ndarray) -> np.ndarray:
    """[Q, G] gallery indices sorted by descending inner product (ties: lower gallery index first). Dense reference:
    holds Q x G scores and rankings (use ``streaming_retrieval_metrics`` for large galleries)."""
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


def relevant_gallery_indices(query_ins: Sequence[int], gallery_ins: Sequence[Sequence[int]]) -> List[np.ndarray]:
    """Per query, the sorted gallery indices whose instance list holds the query instance (-1 padding ignored); an
    inverted index instead of the [Q, G] relevance matrix."""
    inv = defaultdict(list)
    for j, ins in enumerate(gallery_ins):
        for i in sorted(set(int(i) for i in ins if int(i) >= 0)):
            inv[i].append(j)
    return [np.asarray(inv.get(int(q), ()), dtype=np.int64) for q in query_ins]


def _rows(x, normalize: bool) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if normalize:
        from ...utils.descriptor_index import normalize_rows
        x = normalize_rows(x)
    return x


def iter_score_blocks(queries: np.ndarray, gallery, chunk_size: int = 32768,
                      normalize: bool = False) -> Iterator[Tuple[int, int, np.ndarray]]:
    """(g0, g1, scores [len(queries), g1 - g0] float32) for consecutive gallery slices of ``chunk_size`` rows.

    ``gallery`` is anything sliceable into [n, D] rows (an array, a ``np.load(..., mmap_mode='r')`` memmap); only one
    slice and one score block exist at a time."""
    if chunk_size < 1:
        raise ValueError(f'chunk_size must be >= 1, got {chunk_size}')
    for g0 in range(0, len(gallery), chunk_size):
        g1 = min(len(gallery), g0 + chunk_size)
        yield g0, g1, queries @ _rows(gallery[g0:g1], normalize).T


def _order_keys(x: np.ndarray) -> np.ndarray:
    """int64 keys in [0, 2**32) that sort exactly like the float32 values (-0.0 == +0.0; no NaN)."""
    b = (np.asarray(x, dtype=np.float32) + np.float32(0)).view(np.uint32).astype(np.int64)   # -0.0 + 0 = +0.0
    return np.where(b >= 1 << 31, (1 << 32) - 1 - b, b + (1 << 31))


def relevant_ranks(queries: np.ndarray, gallery, relevant: Sequence[np.ndarray], chunk_size: int = 32768,
                   query_chunk: int = 128, normalize: bool = False) -> List[np.ndarray]:
    """Per query, the sorted 1-based ranks of its relevant gallery images in the full stable ranking by descending
    inner product (as ``rank_gallery``), computed block by block without a [Q, G] matrix.

    Rank of relevant image j = 1 + #{i: s_i > s_j} + #{i < j: s_i = s_j}. Per block of ``query_chunk`` queries the
    block's scores are sorted under exact integer keys (query row, score) and each relevant score is located among
    them with ``searchsorted`` (memory ~ 30 bytes per block score)."""
    q_all = _rows(queries, normalize)
    if len(gallery) == 0:
        raise ValueError('the gallery is empty')
    ranks: List[np.ndarray] = [np.zeros(0, dtype=np.int64) for _ in range(len(q_all))]
    for q0 in range(0, len(q_all), query_chunk):
        rel = [np.asarray(r, dtype=np.int64) for r in relevant[q0:q0 + query_chunk]]
        sizes = np.array([len(r) for r in rel], dtype=np.int64)
        n_pairs = int(sizes.sum())
        if not n_pairs:
            continue
        q = q_all[q0:q0 + len(rel)]
        pair_row = np.repeat(np.arange(len(rel), dtype=np.int64), sizes)
        pair_img = np.concatenate(rel)
        # pass 1: each relevant image's score, read from the very block that pass 2 compares it in
        score = np.empty(n_pairs, dtype=np.float32)
        for g0, g1, s in iter_score_blocks(q, gallery, chunk_size, normalize):
            sel = np.flatnonzero((pair_img >= g0) & (pair_img < g1))
            score[sel] = s[pair_row[sel], pair_img[sel] - g0]
        order = np.argsort((pair_row << 32) | _order_keys(score), kind='stable')   # rows stay grouped
        row, img, sc = pair_row[order], pair_img[order], score[order]
        keys = (row << 32) | _order_keys(sc)
        ends = np.cumsum(sizes)
        next_row = (row + 1) << 32
        row_min = np.full(len(rel), np.inf, dtype=np.float32)
        np.minimum.at(row_min, row, sc)
        greater = np.zeros(n_pairs, dtype=np.int64)
        tie_before = np.zeros(n_pairs, dtype=np.int64)
        # pass 2: per relevant image, how many gallery images score higher, or equal at a lower gallery index
        for g0, g1, s in iter_score_blocks(q, gallery, chunk_size, normalize):
            r_idx, c_idx = np.nonzero(s >= row_min[:, None])   # anything lower is below every relevant score
            block = np.sort((r_idx.astype(np.int64) << 32) | _order_keys(s[r_idx, c_idx]))
            del r_idx, c_idx
            row_end = np.searchsorted(block, next_row, 'left')
            gt = row_end - np.searchsorted(block, keys, 'right')     # s > score, same query
            eq = row_end - np.searchsorted(block, keys, 'left') - gt  # s == score (the image itself included)
            del block
            greater += gt
            before = img >= g1                            # the whole block precedes the image
            tie_before[before] += eq[before]
            for t in np.flatnonzero((img >= g0) & (img < g1) & (eq > 1)):   # ties inside the image's own block
                tie_before[t] += int(np.count_nonzero(s[row[t], :img[t] - g0] == sc[t]))
        rank = greater + tie_before + 1
        for i, (a, b) in enumerate(zip(ends - sizes, ends)):
            ranks[q0 + i] = np.sort(rank[a:b])
    return ranks


def metrics_from_ranks(ranks: Sequence[np.ndarray], ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
    """mAP and Recall@K (in %) from each query's sorted 1-based ranks of its relevant images (same formulas and
    floating-point operations as ``retrieval_metrics``)."""
    if len(ranks) == 0:
        raise ValueError('no queries to evaluate')
    aps = [float((np.arange(1, len(r) + 1) / r).mean()) if len(r) else 0.0 for r in ranks]
    out = {'mAP': 100.0 * float(np.mean(aps))}
    first = np.array([int(r[0]) if len(r) else np.iinfo(np.int64).max for r in ranks], dtype=np.int64)
    for k in ks:
        out[f'R@{k}'] = 100.0 * float((first <= k).mean())
    out['num_queries'] = int(len(ranks))
    out['queries_without_relevant'] = int(sum(len(r) == 0 for r in ranks))
    return out


def streaming_retrieval_metrics(queries: np.ndarray, gallery, query_ins: Sequence[int],
                                gallery_ins: Sequence[Sequence[int]], ks: Sequence[int] = (1, 5, 10),
                                chunk_size: int = 32768, query_chunk: int = 128,
                                normalize: bool = False) -> Dict[str, float]:
    """``retrieval_metrics(rank_gallery(queries, gallery), relevance_matrix(query_ins, gallery_ins), ks)`` with memory
    bounded by ``query_chunk x chunk_size`` scores (exact full ranking; ``normalize`` L2-normalises rows first)."""
    if len(gallery_ins) != len(gallery):
        raise ValueError(f'{len(gallery)} gallery descriptors but {len(gallery_ins)} gallery instance lists')
    if len(query_ins) != len(queries):
        raise ValueError(f'{len(queries)} query descriptors but {len(query_ins)} query instances')
    if len(queries) == 0:
        raise ValueError('no queries to evaluate')
    rel = relevant_gallery_indices(query_ins, gallery_ins)
    return metrics_from_ranks(relevant_ranks(queries, gallery, rel, chunk_size, query_chunk, normalize), ks)


def streaming_topk(queries: np.ndarray, gallery, k: int, chunk_size: int = 32768, query_chunk: int = 128,
                   normalize: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, gallery indices) [Q, k] by descending inner product, ties to the lower index (the first
    k columns of ``rank_gallery``), streamed over gallery chunks."""
    q_all = _rows(queries, normalize)
    k = min(int(k), len(gallery))
    out_s = np.empty((len(q_all), k), dtype=np.float32)
    out_i = np.empty((len(q_all), k), dtype=np.int64)
    for q0 in range(0, len(q_all), query_chunk):
        q = q_all[q0:q0 + query_chunk]
        best_s = [np.zeros(0, np.float32)] * len(q)
        best_i = [np.zeros(0, np.int64)] * len(q)
        for g0, g1, s in iter_score_blocks(q, gallery, chunk_size, normalize):
            kth = np.partition(s, s.shape[1] - k, axis=1)[:, s.shape[1] - k] if s.shape[1] > k else None
            for i in range(len(q)):
                keep = np.arange(s.shape[1]) if kth is None else np.flatnonzero(s[i] >= kth[i])
                cs, ci = np.concatenate([best_s[i], s[i, keep]]), np.concatenate([best_i[i], keep + g0])
                o = np.lexsort((ci, -cs))[:k]
                best_s[i], best_i[i] = cs[o], ci[o]
        out_s[q0:q0 + len(q)], out_i[q0:q0 + len(q)] = np.stack(best_s), np.stack(best_i)
    return out_s, out_i


@METRICS.register_module()
class QVSmallObjectRetrievalMetric(BaseMetric):
    """mAP / Recall@K for descriptors produced by a retriever's ``predict``.

    Each data sample carries ``descriptor`` (L2-normalised, [D]), ``is_query`` (bool) and ``instances`` (the query's
    instance id as a one-element list, or the gallery image's instance ids). Queries are ranked against every gallery
    descriptor (exhaustive inner product, as the official FAISS ``IndexFlatIP`` search over the whole gallery),
    streamed in blocks of ``query_chunk x chunk_size`` scores.
    """
    default_prefix: Optional[str] = 'retrieval'

    def __init__(self, topk: Sequence[int] = (1, 5, 10), chunk_size: int = 32768, query_chunk: int = 128,
                 collect_device: str = 'cpu', prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = tuple(int(k) for k in topk)
        self.chunk_size, self.query_chunk = int(chunk_size), int(query_chunk)

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
        return streaming_retrieval_metrics(np.stack([q['descriptor'] for q in queries]),
                                           np.stack([g['descriptor'] for g in gallery]),
                                           [q['instances'][0] for q in queries], [g['instances'] for g in gallery],
                                           self.topk, self.chunk_size, self.query_chunk)
