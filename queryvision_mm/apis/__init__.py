"""High-level entry points used by the tools (MaO gallery extraction, index and search) and the inferencers
(``QVDetInferencer``, ``QVMultiLabelInferencer``; imported on first use so that ``queryvision_mm.apis.mao`` does not
pull in mmdet's / mmpretrain's inferencer modules)."""

__all__ = ['QVDetInferencer', 'QVMultiLabelInferencer']


def __getattr__(name):
    if name == 'QVDetInferencer':  # mmdet only
        from .inferencers import QVDetInferencer
        return QVDetInferencer
    if name == 'QVMultiLabelInferencer':  # mmpretrain (QKS)
        from .multilabel_inferencer import QVMultiLabelInferencer
        return QVMultiLabelInferencer
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
