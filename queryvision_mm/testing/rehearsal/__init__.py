"""Rehearsal of shipped configs: real architecture, tiny data in the config's own format, random checkpoints of the
same architecture in place of downloads, N processes through the real tools (``tools/misc/rehearse.py``).

Submodules register writers into :mod:`.context`'s tables: ``data_det`` / ``weights_det`` (mmdet configs),
``data_cls`` / ``weights_cls`` (mmpretrain configs: QKS, MaO)."""
from .context import (DATA_WRITERS, STEP_PLANS, WEIGHT_PROVIDERS, RehearsalContext, WeightRecord, data_writer,
                      step_plan, weight_provider)

__all__ = ['DATA_WRITERS', 'STEP_PLANS', 'WEIGHT_PROVIDERS', 'step_plan', 'RehearsalContext', 'WeightRecord', 'data_writer', 'weight_provider']
