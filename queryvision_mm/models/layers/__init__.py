from .consistency_queries import QVConsistencyProjector, build_extra_query_attn_mask
from .query_refinement import QVQueryRefinementModule

__all__ = ['QVConsistencyProjector', 'QVQueryRefinementModule', 'build_extra_query_attn_mask']
