from .o2m_assigner import QVO2MAssigner

__all__ = ['QVO2MAssigner']
