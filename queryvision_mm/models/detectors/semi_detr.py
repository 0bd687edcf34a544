"""Semi-DETR (CVPR 2023) as an mmdet 3.3 semi-supervised detector."""
import copy
import warnings
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData
from torch import Tensor

from mmdet.models.detectors import BaseDetector, SemiBaseDetector
from mmdet.models.layers.transformer import inverse_sigmoid
from mmdet.models.utils import rename_loss_dict, reweight_loss_dict
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.structures.bbox import bbox2roi, bbox_cxcywh_to_xyxy, bbox_project, bbox_xyxy_to_cxcywh
from mmdet.utils import ConfigType, OptConfigType, OptMultiConfig

from ..task_modules.pseudo_label_mining import gather_costs, gmm_cost_threshold, matched_costs

# Semi-DETR's consistency-query content (official code; README "Semi-DETR"): RoI Align 7x7 on the 4 neck levels
# + the RoI projector
DEFAULT_CONSISTENCY_ROI_EXTRACTOR = dict(
    type='SingleRoIExtractor',
    roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
    out_channels=256,
    featmap_strides=[8, 16, 32, 64])
DEFAULT_CONSISTENCY_PROJECTOR = dict(
    type='QVConsistencyProjector', in_channels=256, roi_size=7, hidden_dims=1024, out_dims=256)

DEFAULT_SEMI_TRAIN_CFG = dict(
    freeze_teacher=True,
    sup_weight=1.0,
    unsup_weight=4.0,
    cls_pseudo_thr=0.4,  # set A: pseudo-labels that enter the detection loss (and CDN)
    min_pseudo_bbox_wh=(1e-2, 1e-2),
    pseudo_nms=True,  # class-wise NMS (IoU 0.6) on teacher predictions in both stages (official)
    adaptive_pseudo_thr=True,  # candidates: score >= mean + std per image (official)
    use_gmm_mining=True,  # set B (consistency only) = {GMM low-cost} U set A
    consistency_in_o2o=False,  # official: consistency loss only in the one-to-many stage
    dn_on_pseudo_in_o2m=False,  # official: denoising loss on pseudo-labels is zero in stage one
    train_empty_pseudo=True,  # official: a batch without set-A pseudo-labels trains all-background targets
)


def _fp32(like: Optional[Tensor]):
    """Autocast off on ``like``'s device: pseudo-box geometry (homography projection) stays fp32 under ``--amp``,
    where the matmul would otherwise run in fp16 / bf16 (pixel-size errors at 1333 px)."""
    return torch.autocast(like.device.type if like is not None else 'cpu', enabled=False)


@MODELS.register_module()
class QVSemiDETR(SemiBaseDetector):
    """Semi-DETR: DINO student/teacher with stage-wise hybrid matching, cross-view consistency
    queries and cost-based pseudo-label mining (`paper <https://arxiv.org/abs/2307.08095>`_).

    Facts follow the official code (JCZ404/Semi-DETR, mmdet 2.16); the implementation is new and
    reuses mmdet 3.3's :class:`SemiBaseDetector`, :class:`DINO` (via :class:`QVSemiDINO`) and
    :class:`DINOHead` (via :class:`QVSemiDETRHead`).

    Per training iteration:

    1. supervised branch: ``student.loss`` on labeled images (x ``sup_weight``);
    2. teacher on the weak view: class-wise NMS (score 0.01, IoU 0.6, <= 300), candidates with
       score >= mean + std; set A = candidates with score >= ``cls_pseudo_thr``;
    3. one-to-many stage only: student (no grad, strong view, sharing the encoder pass) is
       Hungarian-matched to the candidates; a GMM over the matched costs selects the low-cost ones;
       set B = GMM set U set A. Consistency queries: RoI features of the teacher's weak-view
       features at the set-B weak boxes -> projector, ``num_groups`` copies, positioned at the
       strong-view boxes for the student and at the weak-view boxes for the teacher;
    4. student on the strong view with ``[consistency | CDN(set A) | matching]``; teacher decodes
       ``[consistency | matching]`` again from its cached encoder output; consistency loss
       ``loss_weight * mean((n(h_s) - sg(n(h_t)))^2 * w)`` per decoder layer (n = L2 normalise);
    5. all unsupervised losses x ``unsup_weight``; a batch without any set-A pseudo-label trains
       all-background targets (official; ``train_empty_pseudo=False`` gives mmdet's SemiBaseDetector
       convention of weight 0 instead).

    The matching stage is kept in a persistent buffer (``one_to_many_stage``), set by
    :class:`QVStageSwitchHook` from the iteration, so checkpoints, resume and ``tools/test.py``
    use the right stage (NMS inference in stage one, NMS-free after the switch).

    Args:
        detector (dict): Config of the DINO student/teacher (:class:`QVSemiDINO` + :class:`QVSemiDETRHead`).
        semi_train_cfg (dict): See ``DEFAULT_SEMI_TRAIN_CFG``.
        semi_test_cfg (dict): ``predict_on`` ('student' in Semi-DETR), ``nms`` ('auto' = stage, or bool).
        consistency_cfg (dict, optional): ``roi_extractor``, ``projector``, ``num_groups`` (5) and
            ``loss_weight`` (10). None disables the consistency queries.
    """

    def __init__(self,
                 detector: ConfigType,
                 semi_train_cfg: OptConfigType = None,
                 semi_test_cfg: OptConfigType = None,
                 consistency_cfg: OptConfigType = None,
                 data_preprocessor: OptConfigType = None,
                 init_cfg: OptMultiConfig = None) -> None:
        BaseDetector.__init__(self, data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        # DeformableDETR writes into the head config it is given, so each copy gets its own dict
        self.student = MODELS.build(copy.deepcopy(detector))
        self.teacher = MODELS.build(copy.deepcopy(detector))
        cfg = copy.deepcopy(DEFAULT_SEMI_TRAIN_CFG)
        unknown = set(semi_train_cfg or {}) - set(cfg)
        if unknown:
            raise KeyError(f'QVSemiDETR: unknown semi_train_cfg keys {sorted(unknown)}; known: {sorted(cfg)} '
                           '(the switch iteration belongs to QVStageSwitchHook in custom_hooks)')
        cfg.update(semi_train_cfg or {})
        self.semi_train_cfg = ConfigDict(cfg)
        self.semi_test_cfg = ConfigDict(dict(predict_on='student', nms='auto'))
        self.semi_test_cfg.update(semi_test_cfg or {})
        if self.semi_train_cfg.freeze_teacher:
            self.freeze(self.teacher)

        self.with_consistency = consistency_cfg is not None
        if self.with_consistency:
            consistency_cfg = copy.deepcopy(dict(consistency_cfg))
            # subclasses that make their own content (Sparse Semi-DETR's QRM) leave these out
            roi_extractor = consistency_cfg.pop('roi_extractor', None)
            projector = consistency_cfg.pop('projector', None)
            if roi_extractor is not None:
                self.roi_extractor = MODELS.build(roi_extractor)
            if projector is not None:
                self.projector = MODELS.build(projector)
            self.consistency_groups = int(consistency_cfg.pop('num_groups', 5))
            self.consistency_weight = float(consistency_cfg.pop('loss_weight', 10.0))
            if consistency_cfg:
                raise KeyError(f'QVSemiDETR: unknown consistency_cfg keys {sorted(consistency_cfg)}')
        self.register_buffer('one_to_many_stage', torch.ones((), dtype=torch.bool))
        self._stage_was_set = False
        self._sync_stage()

    # ------------------------------------------------------------------ stage handling
    @property
    def one_to_many(self) -> bool:
        return bool(self.one_to_many_stage)

    def set_stage(self, one_to_many: bool) -> None:
        """Select the matching stage (called by :class:`QVStageSwitchHook` before every iteration)."""
        self.one_to_many_stage.fill_(bool(one_to_many))
        self._stage_was_set = True
        self._sync_stage()

    def _sync_stage(self) -> None:
        nms = self.semi_test_cfg.get('nms', 'auto')
        use_nms = self.one_to_many if nms == 'auto' else bool(nms)
        for det in (self.student, self.teacher):
            det.bbox_head.set_stage(self.one_to_many, use_nms)

    # ------------------------------------------------------------------ training
    def loss(self, multi_batch_inputs: Dict[str, Tensor], multi_batch_data_samples: Dict[str, SampleList]) -> dict:
        if not self._stage_was_set:
            warnings.warn('QVSemiDETR: no QVStageSwitchHook has set the matching stage; training stays in the '
                          'one-to-many stage. Add dict(type="QVStageSwitchHook", switch_iter=...) to custom_hooks.')
            self._stage_was_set = True
        self._sync_stage()
        return super().loss(multi_batch_inputs, multi_batch_data_samples)

    @torch.no_grad()
    def teacher_pseudo_labels(self, batch_inputs: Tensor, batch_data_samples: SampleList,
                              return_teacher_outputs: bool = False):
        """Teacher candidates on (weak-view) inputs, in the input frame: class-wise NMS
        (``nms_cfg`` of the head), positive size, and score >= mean + std per image when
        ``adaptive_pseudo_thr``. Set A is ``scores >= cls_pseudo_thr`` of these."""
        teacher = self.teacher
        teacher.eval()
        feats = teacher.extract_feat(batch_inputs)
        head_in = teacher.forward_transformer(feats, batch_data_samples, return_encoder_outputs=True)
        metas = [s.metainfo for s in batch_data_samples]
        results = teacher.bbox_head.predict_pseudo(
            head_in['hidden_states'], head_in['references'], metas, nms=self._use_pseudo_nms())
        out = []
        for res in results:
            wh = res.bboxes[:, 2:] - res.bboxes[:, :2]
            keep = (wh > 0).all(dim=1)
            if self.semi_train_cfg.adaptive_pseudo_thr and len(res) > 0:
                # official: torch.std (unbiased); a lone candidate gives NaN and is dropped, as there
                if len(res) > 1:
                    keep &= res.scores >= res.scores.mean() + res.scores.std()
                else:
                    keep &= False
            res = self._postprocess_candidates(res[keep])
            res.pseudo_ids = torch.arange(len(res), device=res.bboxes.device)
            out.append(res)
        if return_teacher_outputs:
            return out, feats, head_in['encoder_outputs']
        return out

    def _use_pseudo_nms(self) -> bool:
        """Whether teacher candidates go through class-wise NMS (``pseudo_nms``; subclasses may decide per stage)."""
        return bool(self.semi_train_cfg.pseudo_nms)

    def _postprocess_candidates(self, candidates: InstanceData) -> InstanceData:
        """Hook for subclasses: last filter over one image's teacher candidates (identity here)."""
        return candidates

    @torch.no_grad()
    def get_pseudo_instances(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> Tuple[SampleList, dict]:
        """Teacher pseudo-labels on the weak view, projected to the original image.

        ``batch_info`` keeps what the consistency branch needs: teacher features, encoder output,
        weak-view boxes and metas.
        """
        results, feats, encoder_outputs = self.teacher_pseudo_labels(
            batch_inputs, batch_data_samples, return_teacher_outputs=True)
        weak_boxes = []
        for sample, res in zip(batch_data_samples, results):
            weak_boxes.append(res.bboxes.clone())
            with _fp32(res.bboxes):
                res.bboxes = bbox_project(res.bboxes,
                                          torch.from_numpy(sample.homography_matrix).inverse().to(res.bboxes),
                                          sample.ori_shape)
            sample.gt_instances = res
        batch_info = dict(
            feats=feats, encoder_outputs=encoder_outputs, weak_boxes=weak_boxes,
            weak_metas=[s.metainfo for s in batch_data_samples], weak_samples=batch_data_samples)
        return batch_data_samples, batch_info

    def project_pseudo_instances(self, batch_pseudo_instances: SampleList,
                                 batch_data_samples: SampleList) -> SampleList:
        with _fp32(batch_pseudo_instances[0].gt_instances.bboxes if batch_pseudo_instances else None):
            return super().project_pseudo_instances(batch_pseudo_instances, batch_data_samples)

    def loss_by_pseudo_instances(self,
                                 batch_inputs: Tensor,
                                 batch_data_samples: SampleList,
                                 batch_info: Optional[dict] = None) -> dict:
        cfg = self.semi_train_cfg
        student = self.student
        feats = student.extract_feat(batch_inputs)

        samples_a = []
        for sample in batch_data_samples:
            inst = sample.gt_instances
            new = sample.clone()
            new.gt_instances = inst[inst.scores >= cfg.cls_pseudo_thr]
            samples_a.append(new)
        num_a = sum(len(s.gt_instances) for s in samples_a)

        use_consistency = self.with_consistency and (self.one_to_many or cfg.consistency_in_o2o)
        with_dn = (not self.one_to_many) or cfg.dn_on_pseudo_in_o2m

        enc_in, _ = student.pre_transformer(feats, samples_a)
        encoder_outputs = student.forward_encoder(**enc_in)
        extra_s = extra_t = None
        if use_consistency:
            batch_info['student_feats'] = feats
            set_b = self._consistency_set(student, feats, encoder_outputs, batch_data_samples)
            extra_s, extra_t, slot_w, slot_valid = self._build_consistency_queries(
                set_b, batch_data_samples, batch_info)

        head_in = student.forward_transformer(
            feats, samples_a, extra_queries=extra_s, with_dn=with_dn, encoder_outputs=encoder_outputs)
        extra_hidden = head_in.pop('extra_hidden_states', None)
        head_in.pop('extra_references', None)
        losses = student.bbox_head.loss(**head_in, batch_data_samples=samples_a)
        unsup_weight = cfg.unsup_weight
        losses = reweight_loss_dict(losses, unsup_weight if (num_a > 0 or cfg.train_empty_pseudo) else 0.)

        if use_consistency:
            with torch.no_grad():
                t_in = self.teacher.forward_transformer(
                    batch_info['feats'], batch_info['weak_samples'], extra_queries=extra_t,
                    encoder_outputs=batch_info['encoder_outputs'])
            cons = self.consistency_loss(extra_hidden, t_in['extra_hidden_states'], slot_w, slot_valid)
            losses.update(reweight_loss_dict(cons, unsup_weight))
        elif self.with_consistency:  # switched off: log zeros instead of leaving mmengine's last value on screen
            zero = feats[0].new_zeros(())
            num_layers = student.decoder.num_layers
            losses.update({('loss_consistency' if i == num_layers - 1 else f'd{i}.loss_consistency'): zero
                           for i in range(num_layers)})
        losses['num_pseudo'] = feats[0].new_tensor(num_a / max(len(samples_a), 1))
        # decoder input length of the extra (consistency / refined) block, logged for the query-count comparison
        losses['num_extra_queries'] = feats[0].new_tensor(float(extra_s['query'].size(1)) if use_consistency else 0.)
        return rename_loss_dict('unsup_', losses)

    @torch.no_grad()
    def _consistency_set(self, student, feats, encoder_outputs, batch_data_samples) -> List[Tensor]:
        """Indices (per image, into the projected candidates) of the consistency set B."""
        cfg = self.semi_train_cfg
        thr = cfg.cls_pseudo_thr
        if not cfg.use_gmm_mining:
            return [torch.nonzero(s.gt_instances.scores >= thr).flatten() for s in batch_data_samples]
        enc = {k: v.detach() if isinstance(v, Tensor) else v for k, v in encoder_outputs.items()}
        out = student.forward_transformer(feats, batch_data_samples, with_dn=False, encoder_outputs=enc)
        all_cls, all_box = student.bbox_head(out['hidden_states'], out['references'])
        match_costs = student.bbox_head.assigner.match_costs
        costs = []
        for cls, box, sample in zip(all_cls[-1], all_box[-1], batch_data_samples):
            img_h, img_w = sample.metainfo['img_shape']
            factor = box.new_tensor([img_w, img_h, img_w, img_h])
            pred = InstanceData(scores=cls, bboxes=bbox_cxcywh_to_xyxy(box) * factor)
            costs.append(matched_costs(match_costs, pred, sample.gt_instances, sample.metainfo))
        threshold = gmm_cost_threshold(gather_costs(costs))
        set_b = []
        for cost, sample in zip(costs, batch_data_samples):
            keep = sample.gt_instances.scores >= thr
            if threshold is not None:
                keep |= cost <= threshold
            set_b.append(torch.nonzero(keep).flatten())
        return set_b

    def _consistency_boxes(self, set_b: List[Tensor], student_samples: SampleList, batch_info: dict) -> List[dict]:
        """Per image: the set-B boxes in the student (strong) and teacher (weak) frames, xyxy in pixels.

        An image without any box gets one dummy box ``[w/4, h/4, 3w/4, 3h/4]`` (loss weight 0, official), so
        every image has ``num_real + (num_real == 0)`` rows. Returns dicts with ``student``, ``teacher``,
        ``num_real``, ``student_shape`` and ``teacher_shape``.
        """
        out = []
        for idx, sample, wb, wm in zip(set_b, student_samples, batch_info['weak_boxes'], batch_info['weak_metas']):
            inst = sample.gt_instances[idx]
            sb, tb = inst.bboxes, wb[inst.pseudo_ids]
            sh, sw = sample.metainfo['img_shape']
            th, tw = wm['img_shape']
            n = sb.size(0)
            if n == 0:
                sb = sb.new_tensor([[sw / 4, sh / 4, 3 * sw / 4, 3 * sh / 4]])
                tb = tb.new_tensor([[tw / 4, th / 4, 3 * tw / 4, 3 * th / 4]])
            out.append(dict(student=sb, teacher=tb, num_real=n, student_shape=(sh, sw), teacher_shape=(th, tw)))
        return out

    def _pack_extra_queries(self, boxes: List[dict], contents: List[Tensor], groups: int):
        """Pad per-image content ``(rows_i, D)`` and boxes to the batch maximum and repeat them ``groups`` times.

        Padding slots get zero content and are marked invalid (excluded from the loss); dummy rows of empty
        images are valid with weight 0. Returns ``extra_s`` (strong-view positions), ``extra_t`` (weak-view
        positions, content detached), per-slot weights and validity, each ``(B, groups * slots)``.
        """
        slots = max(max((c.size(0) for c in contents), default=1), 1)
        dev = contents[0].device
        content = contents[0].new_zeros((len(contents), slots, contents[0].size(-1)))
        s_ref, t_ref, weights, valid = [], [], [], []
        for i, (b, c) in enumerate(zip(boxes, contents)):
            rows = c.size(0)
            content[i, :rows] = c
            w = torch.zeros(slots, device=dev)
            w[:b['num_real']] = 1
            v = torch.zeros(slots, dtype=torch.bool, device=dev)
            v[:rows] = True
            weights.append(w)
            valid.append(v)
            for key, shape, refs in (('student', b['student_shape'], s_ref), ('teacher', b['teacher_shape'], t_ref)):
                h, w_img = shape
                box = b[key][:rows]
                full = box.new_tensor([w_img / 4, h / 4, 3 * w_img / 4, 3 * h / 4]).repeat(slots, 1)
                full[:rows] = box
                norm = bbox_xyxy_to_cxcywh(full / full.new_tensor([w_img, h, w_img, h])).clamp(0, 1)
                refs.append(inverse_sigmoid(norm))
        query = content.repeat(1, groups, 1)
        extra_s = dict(query=query, reference_unact=torch.stack(s_ref).repeat(1, groups, 1), num_groups=groups)
        extra_t = dict(query=query.detach(), reference_unact=torch.stack(t_ref).repeat(1, groups, 1),
                       num_groups=groups)
        return extra_s, extra_t, torch.stack(weights).repeat(1, groups), torch.stack(valid).repeat(1, groups)

    def _build_consistency_queries(self, set_b: List[Tensor], student_samples: SampleList, batch_info: dict):
        """Semi-DETR content: projector over RoI features of the teacher's weak-view features at the weak boxes
        (only real boxes and one dummy per empty image enter the projector and its BatchNorm statistics)."""
        if not (hasattr(self, 'roi_extractor') and hasattr(self, 'projector')):
            raise KeyError(f'{type(self).__name__}: consistency_cfg needs roi_extractor and projector '
                           '(see DEFAULT_CONSISTENCY_ROI_EXTRACTOR / DEFAULT_CONSISTENCY_PROJECTOR)')
        boxes = self._consistency_boxes(set_b, student_samples, batch_info)
        rois = bbox2roi([b['teacher'] for b in boxes])
        num_levels = self.roi_extractor.num_inputs
        # mmcv's RoIAlign takes fp32 (also under --amp; its CPU kernel has no bf16)
        feats = tuple(f.float() for f in batch_info['feats'][:num_levels])
        projected = self.projector(self.roi_extractor(feats, rois.float()))
        contents = list(projected.split([b['teacher'].size(0) for b in boxes]))
        return self._pack_extra_queries(boxes, contents, self.consistency_groups)

    def consistency_loss(self, student_hidden: Tensor, teacher_hidden: Tensor, weights: Tensor,
                         valid: Tensor) -> Dict[str, Tensor]:
        """Per decoder layer: ``loss_weight * mean over kept slots and channels of w * (n(s) - n(t))^2``."""
        s = F.normalize(student_hidden, dim=-1)
        t = F.normalize(teacher_hidden.detach(), dim=-1)
        sq = (s - t).pow(2) * weights[None, :, :, None]
        num_layers = sq.size(0)
        losses = {}
        for layer in range(num_layers):
            value = sq[layer][valid].mean() * self.consistency_weight
            key = 'loss_consistency' if layer == num_layers - 1 else f'd{layer}.loss_consistency'
            losses[key] = value
        return losses

    # ------------------------------------------------------------------ inference
    def predict(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> SampleList:
        self._sync_stage()
        return super().predict(batch_inputs, batch_data_samples)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._sync_stage()
