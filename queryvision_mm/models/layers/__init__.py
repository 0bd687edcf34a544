from .category_relations import QVCategorySelfAttention, QVTreeAggregator
from .consistency_queries import QVConsistencyProjector, build_extra_query_attn_mask
from .query_refinement import QVQueryRefinementModule

__all__ = ['QVCategorySelfAttention', 'QVConsistencyProjector', 'QVQueryRefinementModule', 'QVTreeAggregator',
           'build_extra_query_attn_mask']
