"""Retrieval metrics of a prototype-based retriever's predictions (``QVMaORetriever``, mmpretrain's
``ImageToImageRetriever``): per query data sample, ``pred_score`` = a score per gallery (prototype) item and
``gt_label`` = the indices of the relevant gallery items (``QVSoIRRetrievalDataset(split='query')``, mmpretrain's
``InShop`` query split).

Same definitions as :mod:`.retrieval` (the official MaO ``calculate_map``): AP of a query = mean over its relevant
gallery items of (relevant items in the top j) / j, j = the item's rank (ties: lower gallery index first); a relevant
item outside a truncated ranking (``-inf`` score: beyond an approximate index's top k) counts as not retrieved; a
query without relevant items has AP 0 and counts in the mean. Recall@K = fraction of queries with a relevant item in
the top K. Each query is reduced to its AP and hits when processed (no query x gallery matrix is kept).

mmpretrain 1.2's own ``RetrievalRecall`` / ``RetrievalAveragePrecision`` read the same fields but call
``numpy.in1d``, which numpy 2.4 removed (``AttributeError`` with the numpy installed here).
"""
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric

from mmpretrain.registry import METRICS


@METRICS.register_module()
class QVRankedRetrievalMetric(BaseMetric):
    """mAP and Recall@K (in %) from ``pred_score`` [G] and ``gt_label`` (relevant gallery indices) per query."""
    default_prefix: Optional[str] = 'retrieval'

    def __init__(self, topk: Sequence[int] = (1, 5, 10), collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = tuple(int(k) for k in topk)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for s in data_samples:
            if 'pred_score' not in s or 'gt_label' not in s:
                raise KeyError('QVRankedRetrievalMetric: a prediction needs "pred_score" (a score per gallery item) '
                               'and "gt_label" (relevant gallery indices)')
            score = np.asarray(s['pred_score'].detach().cpu().float() if hasattr(s['pred_score'], 'detach')
                               else s['pred_score'], dtype=np.float64)
            relevant = np.zeros(len(score), dtype=bool)
            gt = np.asarray(s['gt_label'].cpu() if hasattr(s['gt_label'], 'cpu') else s['gt_label'], dtype=np.int64)
            if gt.size and (gt.min() < 0 or gt.max() >= len(score)):
                raise ValueError(f'QVRankedRetrievalMetric: gt_label {gt.tolist()} outside the {len(score)} gallery '
                                 'items')
            relevant[gt] = True
            order = np.argsort(-score, kind='stable')
            ranked = relevant[order][:int(np.isfinite(score).sum())]
            ranks = np.flatnonzero(ranked) + 1
            ap = float((np.arange(1, len(ranks) + 1) / ranks).sum() / relevant.sum()) if relevant.any() else 0.0
            self.results.append(dict(ap=ap, hits=[bool(ranked[:k].any()) for k in self.topk],
                                     without_relevant=not relevant.any()))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        if not results:
            raise ValueError('QVRankedRetrievalMetric: no query was evaluated')
        out = {'mAP': 100.0 * float(np.mean([r['ap'] for r in results]))}
        hits = np.array([r['hits'] for r in results], dtype=bool)
        for i, k in enumerate(self.topk):
            out[f'R@{k}'] = 100.0 * float(hits[:, i].mean())
        out['num_queries'] = len(results)
        out['queries_without_relevant'] = int(sum(r['without_relevant'] for r in results))
        return out
