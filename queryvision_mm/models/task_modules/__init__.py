from .assigners import *  # noqa: F401,F403
from .pseudo_label_mining import gmm_cost_threshold, matched_costs

__all__ = ['QVO2MAssigner', 'QVGroupO2MAssigner', 'gmm_cost_threshold', 'matched_costs']
