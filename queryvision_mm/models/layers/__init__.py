from .consistency_queries import QVConsistencyProjector, build_extra_query_attn_mask

__all__ = ['QVConsistencyProjector', 'build_extra_query_attn_mask']
