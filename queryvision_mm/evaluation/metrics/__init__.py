from .category_recall import QVCategoryRecallMetric
from .coco_metric_mp import QVCocoMetric, QVCOCOevalMP
from .duplicate_rate import QVDuplicateRateMetric
from .retrieval import (QVSmallObjectRetrievalMetric, average_precision_from_ranking, rank_gallery,
                        relevance_matrix, retrieval_metrics)
from .retrieval_ranked import QVRankedRetrievalMetric
from .zsl_multilabel import QVZSLMultiLabelMetric, average_precision, topk_prf

__all__ = ['QVCategoryRecallMetric', 'QVCocoMetric', 'QVCOCOevalMP', 'QVDuplicateRateMetric', 'QVRankedRetrievalMetric', 'QVSmallObjectRetrievalMetric', 'QVZSLMultiLabelMetric',
           'average_precision', 'average_precision_from_ranking', 'rank_gallery', 'relevance_matrix',
           'retrieval_metrics', 'topk_prf']
