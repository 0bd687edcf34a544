from .category_recall import QVCategoryRecallMetric
from .duplicate_rate import QVDuplicateRateMetric

__all__ = ['QVCategoryRecallMetric', 'QVDuplicateRateMetric']
