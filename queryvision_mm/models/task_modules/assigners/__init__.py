from .group_o2m_assigner import QVGroupO2MAssigner
from .o2m_assigner import QVO2MAssigner

__all__ = ['QVO2MAssigner', 'QVGroupO2MAssigner']
