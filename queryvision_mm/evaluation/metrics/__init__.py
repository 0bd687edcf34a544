from .category_recall import QVCategoryRecallMetric
from .duplicate_rate import QVDuplicateRateMetric
from .zsl_multilabel import QVZSLMultiLabelMetric, average_precision, topk_prf

__all__ = ['QVCategoryRecallMetric', 'QVDuplicateRateMetric', 'QVZSLMultiLabelMetric', 'average_precision',
           'topk_prf']
