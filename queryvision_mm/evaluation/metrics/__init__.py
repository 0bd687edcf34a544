from ..._lazy import lazy_module_getattr
from .category_recall import QVCategoryRecallMetric
from .coco_metric_mp import QVCocoMetric, QVCOCOevalMP
from .duplicate_rate import QVDuplicateRateMetric

__all__ = ['QVCategoryRecallMetric', 'QVCocoMetric', 'QVCOCOevalMP', 'QVDuplicateRateMetric']
# mmpretrain METRICS / HOOKS (QKS, MaO): imported on first access and by queryvision_mm.mmpretrain_plugin
__getattr__ = lazy_module_getattr(__name__, {
    'QVSmallObjectRetrievalMetric': '.retrieval', 'average_precision_from_ranking': '.retrieval',
    'rank_gallery': '.retrieval', 'relevance_matrix': '.retrieval', 'retrieval_metrics': '.retrieval',
    # streaming evaluation over the gallery in chunks (no Q x G matrices)
    'streaming_retrieval_metrics': '.retrieval', 'streaming_topk': '.retrieval', 'relevant_ranks': '.retrieval',
    'metrics_from_ranks': '.retrieval', 'relevant_gallery_indices': '.retrieval', 'iter_score_blocks': '.retrieval',
    'QVRankedRetrievalMetric': '.retrieval_ranked', 'QVZSLMultiLabelMetric': '.zsl_multilabel',
    'average_precision': '.zsl_multilabel', 'topk_prf': '.zsl_multilabel',
    'QVZSLConsistencyHook': '.zsl_consistency_hook', 'zsl_consistency_errors': '.zsl_consistency_hook'
})
