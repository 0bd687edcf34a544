from .pseudo_label_visualizer import QVPseudoLabelVisualizer
from .pseudo_labels import (build_pseudo_label_visualizer, draw_pseudo_label_grid, run_pseudo_label_visualization,
                            teacher_student_predictions)

__all__ = ['QVPseudoLabelVisualizer', 'build_pseudo_label_visualizer', 'draw_pseudo_label_grid',
           'run_pseudo_label_visualization', 'teacher_student_predictions']
