from .pseudo_labels import draw_pseudo_label_grid, run_pseudo_label_visualization

__all__ = ['draw_pseudo_label_grid', 'run_pseudo_label_visualization']
