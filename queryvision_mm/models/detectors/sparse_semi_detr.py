"""Sparse Semi-DETR (CVPR 2024): query refinement (Sec. 4.1) + reliable pseudo-label filtering (Sec. 4.2) on top
of Semi-DETR."""
import copy
import warnings
from typing import List, Optional

import torch
from mmengine.config import ConfigDict
from mmengine.logging import print_log
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
    t_hat_norm='box',  # QFL targets normalised over all of a box's positives ('group': within each group)
    o2o_pseudo_nms=True,  # one-to-one stage: Semi-DETR's NMS(0.6) on teacher candidates stays on
    dup_iou_thr=0.7,  # one-to-one stage duplicate filter over the confident candidates (None: off)
    dup_class_agnostic=True,  # ... across classes (False: same class only, a no-op after NMS(0.6))
    apply_to_labeled=False,  # the paper groups *pseudo* ground truth; True also uses the groups for labeled images
)
REFINE_VIEWS = ('weak', 'strong')
REFINED_INTO = ('student', 'both')
SMALL_PX = 32  # "small" box for the QRM size logs: sqrt(area) < 32 px of the view the QRM reads


def _rpfm_with_deprecated_keys(rpfm_cfg: dict) -> dict:
    """``nms_free_o2o`` (until issue 13) is translated to the flags that give its old meaning, with a warning."""
    rpfm_cfg = dict(rpfm_cfg)
    if 'nms_free_o2o' in rpfm_cfg:
        nms_free = bool(rpfm_cfg.pop('nms_free_o2o'))
        new = dict(o2o_pseudo_nms=not nms_free, dup_class_agnostic=False)
        msg = (f'QVSparseSemiDETR: rpfm_cfg.nms_free_o2o is deprecated (it named the NMS, not the filter); '
               f'nms_free_o2o={nms_free} is read as {new} (its old meaning). The default is now '
               'o2o_pseudo_nms=True + dup_class_agnostic=True (Semi-DETR\'s NMS(0.6), then the duplicate filter).')
        warnings.warn(msg, DeprecationWarning, stacklevel=3)
        print_log(msg, logger='current', level=30)
        rpfm_cfg.update(new)
    return rpfm_cfg


@MODELS.register_module()
class QVSparseSemiDETR(QVSemiDETR):
    """Sparse Semi-DETR (`paper <https://arxiv.org/abs/2404.01819>`_), a subclass of :class:`QVSemiDETR`.

    Two modules, each switched off by setting its config to None (then that part is exactly Semi-DETR's; with
    ``qrm_cfg=None`` the consistency queries get Semi-DETR's RoI extractor and projector unless
    ``consistency_cfg`` configures them), so
    the paper's Table 5(a) ablation is ``qrm_cfg=None`` / ``rpfm_cfg=None`` overrides:

    * **Query Refinement Module** (``qrm_cfg``, :class:`QVQueryRefinementModule`): replaces the content of
      Semi-DETR's cross-view consistency queries (RoI Align + projector) by refined queries built from a
      high- and a low-resolution feature map at the pseudo boxes, and keeps only the fraction ``keep_ratio``
      of the pseudo boxes ranked best (``qrm_cfg.select_by``: teacher confidence by default, or the cross-resolution
      agreement) (fewer extra queries); ``qrm_cfg.label_in_query`` adds the pseudo label's class embedding
      (Sec. 4.1 "query label features"). The refined queries are prepended to the student's decoder queries
      (strong-view positions) under Semi-DETR's mask (``[refined | CDN | matching]``; refined groups see only
      themselves and the matching queries, nothing sees them) and trained with Semi-DETR's consistency loss
      (``consistency_cfg``: ``num_groups``, ``loss_weight``) against the teacher's decoding of the same slots
      at the weak-view positions. ``qrm_cfg.refined_into``: ``'student'`` (default, Table 5b best row: the
      teacher decodes its own class-embedding queries, never the refined ones) or ``'both'`` (the refined
      content also in the teacher). ``qrm_cfg.refine_view``: ``'weak'`` (default, teacher features on the weak
      view, Table 5b text) or ``'strong'`` (student features on the strong view, detached).
    * **Reliable Pseudo-Label Filtering** (``rpfm_cfg``, see ``DEFAULT_RPFM_CFG``): one-to-many stage with
      ``num_groups`` groups of pseudo ground truth x ``topk`` predictions (:class:`QVGroupO2MAssigner`
      replaces the student head's ``o2m_assigner`` for the pseudo-labels; labeled images keep Semi-DETR's
      top-13 unless ``apply_to_labeled``; ``t_hat_norm``); one-to-one stage: Semi-DETR's NMS(0.6) on the
      teacher candidates (``o2o_pseudo_nms``) and then duplicate filtering of the pseudo-labels
      (:func:`filter_duplicate_pseudo_labels` at IoU ``dup_iou_thr``, across classes when
      ``dup_class_agnostic``, over the candidates with score >= ``semi_train_cfg.cls_pseudo_thr``, the
      paper's tau), so the pseudo-labels are a subset of Semi-DETR's. ``nms_free_o2o`` (old key) is read
      with a DeprecationWarning as its old meaning.

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
            rpfm_cfg = _rpfm_with_deprecated_keys(rpfm_cfg)
            unknown = set(rpfm_cfg) - set(rpfm)
            if unknown:
                raise KeyError(f'QVSparseSemiDETR: unknown rpfm_cfg keys {sorted(unknown)}; known: {sorted(rpfm)}')
            rpfm.update(rpfm_cfg)
            base_assigner = dict(detector['bbox_head'].get('o2m_assigner', {}))
            group_assigner = dict(
                type='QVGroupO2MAssigner', num_groups=rpfm['num_groups'], topk=rpfm['topk'],
                t_hat_norm=rpfm['t_hat_norm'],
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
            refined_into = qrm.pop('refined_into', 'student')
            if refined_into not in REFINED_INTO:
                raise ValueError(f'QVSparseSemiDETR: qrm_cfg.refined_into must be one of {REFINED_INTO}, '
                                 f'got {refined_into!r}')
            label_in_query = bool(qrm.pop('label_in_query', True))
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
            self.refined_into = refined_into
            self.label_in_query = label_in_query
            self.qrm = MODELS.build(qrm)
        self._qrm_log = None

    @property
    def with_rpfm(self) -> bool:
        return self.rpfm_cfg is not None

    # ------------------------------------------------------------------ RPFM, pseudo-label side
    def _rpfm_o2o(self) -> bool:
        return self.with_rpfm and not self.one_to_many

    def _use_pseudo_nms(self) -> bool:
        if self._rpfm_o2o() and not self.rpfm_cfg.o2o_pseudo_nms:
            return False
        return super()._use_pseudo_nms()

    def _postprocess_candidates(self, candidates: InstanceData) -> InstanceData:
        if not self._rpfm_o2o() or self.rpfm_cfg.dup_iou_thr is None:
            return candidates
        return filter_duplicate_pseudo_labels(candidates, self.semi_train_cfg.cls_pseudo_thr,
                                              self.rpfm_cfg.dup_iou_thr, self.rpfm_cfg.dup_class_agnostic)

    def loss_by_pseudo_instances(self, batch_inputs: Tensor, batch_data_samples: SampleList,
                                 batch_info: Optional[dict] = None) -> dict:
        """Semi-DETR's unsupervised loss, with the RPFM group assigner in the student's one-to-many stage, plus
        the QRM's box-size logs (``unsup_qrm_*``, only in iterations that build refined queries)."""
        self._qrm_log = None
        if not self.with_rpfm:
            losses = super().loss_by_pseudo_instances(batch_inputs, batch_data_samples, batch_info)
        else:
            head = self.student.bbox_head
            labeled_assigner = head.o2m_assigner
            head.o2m_assigner = self.rpfm_assigner
            try:
                losses = super().loss_by_pseudo_instances(batch_inputs, batch_data_samples, batch_info)
            finally:
                head.o2m_assigner = labeled_assigner
        if self._qrm_log is not None:
            losses.update({f'unsup_{k}': v for k, v in self._qrm_log.items()})
        self._qrm_log = None
        return losses

    # ------------------------------------------------------------------ QRM
    def _build_consistency_queries(self, set_b: List[Tensor], student_samples: SampleList, batch_info: dict):
        if not self.with_qrm:
            return super()._build_consistency_queries(set_b, student_samples, batch_info)
        boxes = self._consistency_boxes(set_b, student_samples, batch_info)
        labels, confs = [], []  # pseudo labels and teacher confidences of the rows (dummy row: label 0, score 0)
        for idx, sample, b in zip(set_b, student_samples, boxes):
            inst = sample.gt_instances[idx]
            rows = b['teacher'].size(0)
            labels.append(inst.labels if b['num_real'] > 0 else inst.labels.new_zeros(rows))
            confs.append(inst.scores if b['num_real'] > 0 else inst.scores.new_zeros(rows))
        if self.refine_view == 'weak':
            feats, key = batch_info['feats'], 'teacher'
        else:  # student features of the strong view, without gradient into the student through this path
            feats, key = [f.detach() for f in batch_info['student_feats']], 'student'
        # fp32 into mmcv's RoIAlign also under --amp (its CPU kernel has no bf16)
        content, scores = self.qrm([f.float() for f in feats], bbox2roi([b[key] for b in boxes]).float())
        rows = [b[key].size(0) for b in boxes]
        kept_boxes, kept_contents, kept_labels = [], [], []
        for b, c, s, lab, conf in zip(boxes, content.split(rows), scores.split(rows), labels, confs):
            if b['num_real'] > 0:
                keep = self.qrm.select(s, conf)
                b = dict(b, student=b['student'][keep], teacher=b['teacher'][keep], num_real=int(keep.numel()))
                c, lab = c[keep], lab[keep]
            kept_boxes.append(b)
            kept_contents.append(c)
            kept_labels.append(lab)
        self._qrm_log = self._size_stats(boxes, kept_boxes, key)
        if self.label_in_query:  # Sec. 4.1 "query label features": the pseudo label's class embedding (student's)
            emb = self.student.dn_query_generator.label_embedding
            kept_contents = [c + emb(lab).to(c.dtype) for c, lab in zip(kept_contents, kept_labels)]
        extra_s, extra_t, weights, valid = self._pack_extra_queries(kept_boxes, kept_contents, self.consistency_groups)
        if self.refined_into == 'student':
            # Table 5(b) best row: refined queries in the student only. The teacher decodes its own original
            # queries at the same (weak-view) boxes: content = its class embedding of the pseudo label, the
            # denoising-query content it is trained on, no QRM output
            t_emb = self.teacher.dn_query_generator.label_embedding
            with torch.no_grad():
                t_contents = [t_emb(lab).to(c.dtype) for c, lab in zip(kept_contents, kept_labels)]
            _, extra_t, _, _ = self._pack_extra_queries(kept_boxes, t_contents, self.consistency_groups)
        return extra_s, extra_t, weights, valid

    @staticmethod
    def _size_stats(all_boxes: List[dict], kept_boxes: List[dict], key: str) -> Optional[dict]:
        """Median sqrt(area) (px of the view the QRM reads) and fraction < ``SMALL_PX`` of all real set-B boxes
        and of the kept ones; None when the batch has no real box."""
        def real(bs):
            return [b[key][:b['num_real']] for b in bs]
        every, kept = torch.cat(real(all_boxes)), torch.cat(real(kept_boxes))
        if every.size(0) == 0:
            return None
        out = {}
        for name, bx in (('all', every), ('kept', kept)):
            side = ((bx[:, 2] - bx[:, 0]).clamp(min=0) * (bx[:, 3] - bx[:, 1]).clamp(min=0)).sqrt().float()
            out[f'qrm_{name}_sqrt_area'] = side.median().detach()
            out[f'qrm_{name}_small_frac'] = (side < SMALL_PX).float().mean().detach()
        return out
