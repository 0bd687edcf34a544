from .._lazy import lazy_module_getattr
from .pseudo_label_visualizer import QVPseudoLabelVisualizer
from .pseudo_labels import (build_pseudo_label_visualizer, draw_pseudo_label_grid, run_pseudo_label_visualization,
                            teacher_student_predictions)

__all__ = ['QVPseudoLabelVisualizer', 'build_pseudo_label_visualizer', 'draw_pseudo_label_grid',
           'run_pseudo_label_visualization', 'teacher_student_predictions']
# mmpretrain VISUALIZERS (MaO): imported on first access and by queryvision_mm.mmpretrain_plugin
__getattr__ = lazy_module_getattr(__name__, {'QVMaORetrievalVisualizer': '.mao_retrieval_visualizer'})
