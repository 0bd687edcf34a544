"""The classification / retrieval half of queryvision_mm (QKS, MaO): registers its modules into **mmpretrain's**
registries (scope ``mmpretrain``).

``import queryvision_mm`` is the detection plugin (Semi-DETR, Sparse Semi-DETR, CQ-DINO; mmdet registries) and does
not import mmpretrain, transformers, open_clip or scikit-image. The QKS and MaO configs list this module instead::

    custom_imports = dict(imports=['queryvision_mm.mmpretrain_plugin', 'queryvision_mm.safe_load'],
                          allow_failed_imports=False)

Importing it registers: the QKS classifier, head, Q-Former neck and CLIP vision tower; the MaO describer,
components, stage-A model and retriever; their datasets (``QVZSLMultiLabelDataset``, ``QVSoIRDataset``,
``QVSoIRPairDataset``, ``QVSoIRRetrievalDataset``) and transforms; metrics (``QVZSLMultiLabelMetric``,
``QVSmallObjectRetrievalMetric``, ``QVRankedRetrievalMetric``); hooks (``QVZSLConsistencyHook``,
``QVSaveLoRAAdapterHook``); the MaO retrieval visualizer; and, under the same names as in mmdet's registry, the
shared ``QVEfficientNetLite`` backbone and ``QVAsymmetricLoss``.
"""
import importlib.util

from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS

from . import datasets, engine, evaluation, models, visualization  # noqa: F401  (the detection half first)
from .datasets import soir, soir_retrieval, zsl_multilabel  # noqa: F401
from .engine.hooks import lora_adapter_hook  # noqa: F401
from .evaluation.metrics import retrieval, retrieval_ranked, zsl_consistency_hook  # noqa: F401
from .evaluation.metrics import zsl_multilabel as zsl_multilabel_metric  # noqa: F401
from .models import classifiers, heads, necks, retrievers  # noqa: F401
from .models.backbones import clip_vision_tokens  # noqa: F401
from .models.backbones.efficientnet_lite import QVEfficientNetLite
from .models.losses.asymmetric_loss import QVAsymmetricLoss

if importlib.util.find_spec(f'{__package__}.visualization.mao_retrieval_visualizer') is not None:
    from .visualization import mao_retrieval_visualizer  # noqa: F401

for _module in (QVEfficientNetLite, QVAsymmetricLoss):
    if MMPRETRAIN_MODELS.get(_module.__name__) is not _module:
        MMPRETRAIN_MODELS.register_module(module=_module)
