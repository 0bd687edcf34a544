"""Sparse Semi-DETR (CVPR 2024): query refinement + reliable pseudo-label filtering on top of Semi-DETR."""
import copy
from typing import List, Optional

import torch
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData
from torch import Tensor

from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures import SampleList
from mmdet.structures.bbox import bbox2roi
from mmdet.utils import ConfigType, OptConfigType, OptMultiConfig

from ..task_modules.pseudo_label_filter import filter_duplicate_pseudo_labels
from .semi_detr import DEFAULT_CONSISTENCY_PROJECTOR, DEFAULT_CONSISTENCY_ROI_EXTRACTOR, QVSemiDETR

DEFAULT_RPFM_CFG = dict(
    num_groups=6,  # m groups of pseudo ground truth in the one-to-many stage (paper Table 6a)
    topk=4,  # k predictions per group (Table 6b)
    dup_iou_thr=0.7,  # one-to-one stage: same-class pseudo boxes above this IoU are duplicates
    nms_free_o2o=True,  # one-to-one stage: the duplicate filter replaces Semi-DETR's NMS(0.6) on candidates
    apply_to_labeled=False,  # the paper groups *pseudo* ground truth; True also uses the groups for labeled images
)
REFINE_VIEWS = ('weak', 'strong')


@MODELS.register_module()
class QVSparseSemiDETR(QVSemiDETR):
    """Sparse Semi-DETR (`paper <https://arxiv.org/abs/2404.01819>`_), a subclass of :class:`QVSemiDETR`.

    Two modules, each switched off by setting its config to None (then that part is exactly Semi-DETR's; with
    ``qrm_cfg=None`` the consistency queries get Semi-DETR's RoI extractor and projector unless
    ``consistency_cfg`` configures them), so
    the paper's Table 5(a) ablation is ``qrm_cfg=None`` / ``rpfm_cfg=None`` overrides:

    * **Query Refinement Module** (``qrm_cfg``, :class:`QVQueryRefinementModule`): replaces the content of
      Semi-DETR's cross-view consistency queries (RoI Align + projector) by refined queries built from a
      high- and a low-resolution feature map at the pseudo boxes, and keeps only the boxes whose refined
      features agree best across the two resolutions (fewer extra queries). The refined queries are
      prepended to the student's (strong-view positions) and the teacher's (weak-view positions) decoder
      queries under Semi-DETR's mask (``[refined | CDN | matching]``; refined groups see only themselves and
      the matching queries, nothing sees them) and trained with Semi-DETR's consistency loss
      (``consistency_cfg``: ``num_groups``, ``loss_weight``). ``qrm_cfg.refine_view``: ``'weak'`` (default,
      teacher features on the weak view, paper Table 5b best) or ``'strong'`` (student features on the strong
      view, detached).
    * **Reliable Pseudo-Label Filtering** (``rpfm_cfg``, see ``DEFAULT_RPFM_CFG``): one-to-many stage with
      ``num_groups`` groups of pseudo ground truth x ``topk`` predictions (:class:`QVGroupO2MAssigner`
      replaces the student head's ``o2m_assigner`` for the pseudo-labels; labeled images keep Semi-DETR's
      top-13 unless ``apply_to_labeled``); one-to-one stage with duplicate filtering of the pseudo-labels
      (:func:`filter_duplicate_pseudo_labels` at IoU ``dup_iou_thr`` over the candidates with
      score >= ``semi_train_cfg.cls_pseudo_thr``, the paper's tau) instead of Semi-DETR's NMS when
      ``nms_free_o2o``.

    The paper's equations 3-6 are not available; README "Sparse Semi-DETR" lists what the text states and
    which choice each flag makes.
    """

    def __init__(self,
                 detector: ConfigType,
                 semi_train_cfg: OptConfigType = None,
                 semi_test_cfg: OptConfigType = None,
                 consistency_cfg: OptConfigType = None,
                 qrm_cfg: OptConfigType = None,
                 rpfm_cfg: OptConfigType = None,
                 data_preprocessor: OptConfigType = None,
                 init_cfg: OptMultiConfig = None) -> None:
        detector = copy.deepcopy(detector)
        if rpfm_cfg is not None:
            rpfm = copy.deepcopy(DEFAULT_RPFM_CFG)
            unknown = set(rpfm_cfg) - set(rpfm)
            if unknown:
                raise KeyError(f'QVSparseSemiDETR: unknown rpfm_cfg keys {sorted(unknown)}; known: {sorted(rpfm)}')
            rpfm.update(rpfm_cfg)
            base_assigner = dict(detector['bbox_head'].get('o2m_assigner', {}))
            group_assigner = dict(
                type='QVGroupO2MAssigner', num_groups=rpfm['num_groups'], topk=rpfm['topk'],
                **{k: v for k, v in base_assigner.items() if k in ('alpha', 'beta', 'iou_mode', 'eps')})
            if rpfm['apply_to_labeled']:
                detector['bbox_head']['o2m_assigner'] = group_assigner
            rpfm_cfg = ConfigDict(rpfm)
        qrm = None
        if qrm_cfg is not None:
            if consistency_cfg is None:
                raise ValueError('QVSparseSemiDETR: qrm_cfg needs consistency_cfg (num_groups, loss_weight) for '
                                 'the refined queries and their consistency loss')
            qrm = dict(copy.deepcopy(qrm_cfg))
            refine_view = qrm.pop('refine_view', 'weak')
            if refine_view not in REFINE_VIEWS:
                raise ValueError(f'QVSparseSemiDETR: qrm_cfg.refine_view must be one of {REFINE_VIEWS}, '
                                 f'got {refine_view!r}')
            # the QRM makes the content: Semi-DETR's RoI extractor and projector are not built
            consistency_cfg = {k: v for k, v in dict(consistency_cfg).items()
                               if k not in ('roi_extractor', 'projector')}
        elif consistency_cfg is not None:
            # QRM off: Semi-DETR's consistency queries, with its RoI extractor + projector unless configured
            consistency_cfg = dict(copy.deepcopy(consistency_cfg))
            consistency_cfg.setdefault('roi_extractor', copy.deepcopy(DEFAULT_CONSISTENCY_ROI_EXTRACTOR))
            consistency_cfg.setdefault('projector', copy.deepcopy(DEFAULT_CONSISTENCY_PROJECTOR))
        super().__init__(detector, semi_train_cfg=semi_train_cfg, semi_test_cfg=semi_test_cfg,
                         consistency_cfg=consistency_cfg, data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.rpfm_cfg = rpfm_cfg
        if self.with_rpfm:
            # the one-to-many assigner of the pseudo-label branch (the heads keep Semi-DETR's for labeled images
            # unless apply_to_labeled, in which case both are the group assigner)
            self.rpfm_assigner = TASK_UTILS.build(group_assigner)
        self.with_qrm = qrm is not None
        if self.with_qrm:
            self.refine_view = refine_view
            self.qrm = MODELS.build(qrm)

    @property
    def with_rpfm(self) -> bool:
        return self.rpfm_cfg is not None

    # ------------------------------------------------------------------ RPFM, pseudo-label side
    def _rpfm_o2o(self) -> bool:
        return self.with_rpfm and not self.one_to_many

    def _use_pseudo_nms(self) -> bool:
        if self._rpfm_o2o() and self.rpfm_cfg.nms_free_o2o:
            return False
        return super()._use_pseudo_nms()

    def _postprocess_candidates(self, candidates: InstanceData) -> InstanceData:
        if not self._rpfm_o2o():
            return candidates
        return filter_duplicate_pseudo_labels(candidates, self.semi_train_cfg.cls_pseudo_thr,
                                              self.rpfm_cfg.dup_iou_thr)

    def loss_by_pseudo_instances(self, batch_inputs: Tensor, batch_data_samples: SampleList,
                                 batch_info: Optional[dict] = None) -> dict:
        """Semi-DETR's unsupervised loss, with the RPFM group assigner in the student's one-to-many stage."""
        if not self.with_rpfm:
            return super().loss_by_pseudo_instances(batch_inputs, batch_data_samples, batch_info)
        head = self.student.bbox_head
        labeled_assigner = head.o2m_assigner
        head.o2m_assigner = self.rpfm_assigner
        try:
            return super().loss_by_pseudo_instances(batch_inputs, batch_data_samples, batch_info)
        finally:
            head.o2m_assigner = labeled_assigner

    # ------------------------------------------------------------------ QRM
    def _build_consistency_queries(self, set_b: List[Tensor], student_samples: SampleList, batch_info: dict):
        if not self.with_qrm:
            return super()._build_consistency_queries(set_b, student_samples, batch_info)
        boxes = self._consistency_boxes(set_b, student_samples, batch_info)
        if self.refine_view == 'weak':
            feats, key = batch_info['feats'], 'teacher'
        else:  # student features of the strong view, without gradient into the student through this path
            feats, key = [f.detach() for f in batch_info['student_feats']], 'student'
        # fp32 into mmcv's RoIAlign also under --amp (its CPU kernel has no bf16)
        content, scores = self.qrm([f.float() for f in feats], bbox2roi([b[key] for b in boxes]).float())
        rows = [b[key].size(0) for b in boxes]
        kept_boxes, kept_contents = [], []
        for b, c, s in zip(boxes, content.split(rows), scores.split(rows)):
            if b['num_real'] > 0:
                keep = self.qrm.select(s)
                b = dict(b, student=b['student'][keep], teacher=b['teacher'][keep], num_real=int(keep.numel()))
                c = c[keep]
            kept_boxes.append(b)
            kept_contents.append(c)
        return self._pack_extra_queries(kept_boxes, kept_contents, self.consistency_groups)
