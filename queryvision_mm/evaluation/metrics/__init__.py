from .duplicate_rate import QVDuplicateRateMetric

__all__ = ['QVDuplicateRateMetric']
