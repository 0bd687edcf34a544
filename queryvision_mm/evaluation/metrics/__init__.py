from .category_recall import QVCategoryRecallMetric
from .duplicate_rate import QVDuplicateRateMetric
from .retrieval import (QVSmallObjectRetrievalMetric, average_precision_from_ranking, rank_gallery,
                        relevance_matrix, retrieval_metrics)
from .zsl_multilabel import QVZSLMultiLabelMetric, average_precision, topk_prf

__all__ = ['QVCategoryRecallMetric', 'QVDuplicateRateMetric', 'QVSmallObjectRetrievalMetric', 'QVZSLMultiLabelMetric',
           'average_precision', 'average_precision_from_ranking', 'rank_gallery', 'relevance_matrix',
           'retrieval_metrics', 'topk_prf']
