from .category_relations import QVCategorySelfAttention, QVTreeAggregator
from .category_selector import QVCategoryQuerySelector
from .consistency_queries import QVConsistencyProjector, build_extra_query_attn_mask
from .legrad import LeGradDINOv2, LeGradOpenCLIP
from .query_refinement import QVQueryRefinementModule

__all__ = ['LeGradDINOv2', 'LeGradOpenCLIP', 'QVCategoryQuerySelector', 'QVCategorySelfAttention', 'QVConsistencyProjector', 'QVQueryRefinementModule',
           'QVTreeAggregator', 'build_extra_query_attn_mask']
