"""DINO head with Semi-DETR's stage-wise hybrid matching (one-to-many -> one-to-one)."""
from typing import List, Tuple

import torch
from mmengine.structures import InstanceData
from torch import Tensor

from mmdet.models.dense_heads import DINOHead
from mmdet.models.layers import multiclass_nms
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_xyxy_to_cxcywh
from mmdet.utils import ConfigType, InstanceList, reduce_mean


@MODELS.register_module()
class QVSemiDETRHead(DINOHead):
    r"""DINO head whose matching switches from one-to-many to one-to-one (Semi-DETR, CVPR 2023).

    * **One-to-many stage** (``self.one_to_many = True``): every decoder layer and the encoder
      proposals are assigned with :class:`QVO2MAssigner` (top-k task-aligned). Classification uses a
      quality-focal loss on the normalised alignment :math:`\hat t`; L1/GIoU are weighted by
      :math:`\hat t`; all three are normalised by :math:`\sum \hat t` (averaged over GPUs, >= 1).
      Inference applies class-wise NMS (duplicates are expected).
    * **One-to-one stage**: plain DINO (Hungarian matching, focal loss), NMS-free top-k inference.

    The stage is set from outside (:class:`QVSemiDETR` / :class:`QVStageSwitchHook`); denoising
    losses are unaffected by it.

    Args:
        o2m_assigner (dict): Config of the one-to-many assigner.
        loss_cls_o2m (dict): Classification loss of the one-to-many stage; must accept
            ``(labels, scores)`` targets like mmdet's ``QualityFocalLoss``.
        l1_double_count (bool): Reproduce the official code's effective L1 weight, which is twice the
            configured one because its ``loss_bbox_xy``/``loss_bbox_hw`` terms are summed on top of
            ``loss_bbox``. Applied to every L1 term (layers, encoder, denoising); the matching cost is
            unchanged. Defaults to True (faithful).
        nms_cfg (dict): Class-wise NMS used in the one-to-many stage and for pseudo-labels:
            ``score_thr``, ``iou_threshold``, ``max_per_img``.
        enc_class_agnostic (bool): Train the encoder (two-stage proposal) outputs with every target labelled
            as class 0, i.e. as objectness, as the official Semi-DETR head does; False keeps mmdet DINO's
            class-aware encoder loss. Defaults to True (faithful).
    """

    def __init__(self,
                 *args,
                 o2m_assigner: ConfigType = dict(type='QVO2MAssigner', topk=13, alpha=1.0, beta=6.0),
                 loss_cls_o2m: ConfigType = dict(
                     type='QualityFocalLoss', use_sigmoid=True, beta=2.0, loss_weight=2.0),
                 l1_double_count: bool = True,
                 nms_cfg: ConfigType = dict(score_thr=0.01, iou_threshold=0.6, max_per_img=300),
                 enc_class_agnostic: bool = True,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.enc_class_agnostic = enc_class_agnostic
        self.o2m_assigner = TASK_UTILS.build(o2m_assigner)
        self.loss_cls_o2m = MODELS.build(loss_cls_o2m)
        self.l1_double_count = l1_double_count
        if l1_double_count:
            self.loss_bbox.loss_weight = self.loss_bbox.loss_weight * 2
        self.nms_cfg = dict(nms_cfg)
        self.one_to_many = False
        self.use_nms = False

    def set_stage(self, one_to_many: bool, use_nms: bool = None) -> None:
        """Select the matching stage; inference uses NMS in the one-to-many stage by default."""
        self.one_to_many = bool(one_to_many)
        self.use_nms = self.one_to_many if use_nms is None else bool(use_nms)

    # ------------------------------------------------------------------ training
    def loss_by_feat(self, all_layers_cls_scores: Tensor, all_layers_bbox_preds: Tensor, enc_cls_scores: Tensor,
                     enc_bbox_preds: Tensor, batch_gt_instances: InstanceList, batch_img_metas: List[dict],
                     dn_meta: dict, batch_gt_instances_ignore=None) -> dict:
        """:meth:`DINOHead.loss_by_feat`, with the encoder loss optionally class-agnostic."""
        agnostic = self.enc_class_agnostic and enc_cls_scores is not None
        losses = super().loss_by_feat(all_layers_cls_scores, all_layers_bbox_preds,
                                      None if agnostic else enc_cls_scores, enc_bbox_preds, batch_gt_instances,
                                      batch_img_metas, dn_meta, batch_gt_instances_ignore)
        if agnostic:
            objectness = [InstanceData(bboxes=g.bboxes, labels=torch.zeros_like(g.labels)) for g in batch_gt_instances]
            loss_cls, loss_bbox, loss_iou = self.loss_by_feat_single(enc_cls_scores, enc_bbox_preds, objectness,
                                                                     batch_img_metas)
            losses.update(enc_loss_cls=loss_cls, enc_loss_bbox=loss_bbox, enc_loss_iou=loss_iou)
        return losses

    @staticmethod
    def split_outputs(all_layers_cls_scores: Tensor, all_layers_bbox_preds: Tensor,
                      dn_meta: dict) -> Tuple[Tensor]:
        """As :meth:`DINOHead.split_outputs`, but accepts ``dn_meta=None`` (no denoising queries,
        e.g. pseudo-labels in the one-to-many stage); mmdet 3.3 dereferences it before its None check."""
        if dn_meta is None:
            return all_layers_cls_scores, all_layers_bbox_preds, None, None
        return DINOHead.split_outputs(all_layers_cls_scores, all_layers_bbox_preds, dn_meta)

    def loss_by_feat_single(self, cls_scores: Tensor, bbox_preds: Tensor, batch_gt_instances: InstanceList,
                            batch_img_metas: List[dict]) -> Tuple[Tensor]:
        """Per-layer loss; dispatches to the one-to-many variant in the first stage."""
        if not self.one_to_many:
            return super().loss_by_feat_single(cls_scores, bbox_preds, batch_gt_instances, batch_img_metas)
        return self.loss_by_feat_single_o2m(cls_scores, bbox_preds, batch_gt_instances, batch_img_metas)

    def _o2m_targets_single(self, cls_score: Tensor, bbox_pred: Tensor, gt_instances: InstanceData,
                            img_meta: dict) -> Tuple[Tensor]:
        img_h, img_w = img_meta['img_shape']
        # fp32 whatever the autocast dtype of the predictions (as mmdet's DETRHead targets: dtype of the GT boxes)
        factor = bbox_pred.new_tensor([img_w, img_h, img_w, img_h], dtype=torch.float32).unsqueeze(0)
        pred_instances = InstanceData(
            scores=cls_score.detach().sigmoid(), bboxes=bbox_cxcywh_to_xyxy(bbox_pred.detach()) * factor)
        result = self.o2m_assigner.assign(pred_instances, gt_instances, img_meta=img_meta)
        num_q = cls_score.size(0)
        pos = result.gt_inds > 0
        labels = cls_score.new_full((num_q, ), self.num_classes, dtype=torch.long)
        labels[pos] = result.labels[pos]
        quality = result.get_extra_property('assign_metrics')
        bbox_targets = bbox_pred.new_zeros((num_q, 4), dtype=gt_instances.bboxes.dtype)
        if pos.any():
            gt_xyxy = gt_instances.bboxes[result.gt_inds[pos] - 1] / factor
            bbox_targets[pos] = bbox_xyxy_to_cxcywh(gt_xyxy)
        return labels, quality, bbox_targets, pos

    def loss_by_feat_single_o2m(self, cls_scores: Tensor, bbox_preds: Tensor,
                                batch_gt_instances: InstanceList, batch_img_metas: List[dict]) -> Tuple[Tensor]:
        """One-to-many loss of one layer (quality focal + t-hat-weighted L1/GIoU, normalised by sum t-hat)."""
        targets = [
            self._o2m_targets_single(c, b, g, m)
            for c, b, g, m in zip(cls_scores, bbox_preds, batch_gt_instances, batch_img_metas)
        ]
        labels = torch.cat([t[0] for t in targets])
        quality = torch.cat([t[1] for t in targets])
        bbox_targets = torch.cat([t[2] for t in targets])
        pos = torch.cat([t[3] for t in targets])

        avg_factor = reduce_mean(quality.sum().detach()).clamp(min=1).item()
        loss_cls = self.loss_cls_o2m(
            cls_scores.reshape(-1, self.cls_out_channels), (labels, quality), avg_factor=avg_factor)

        factors = torch.cat([
            b.new_tensor([m['img_shape'][1], m['img_shape'][0]] * 2).unsqueeze(0).expand(b.size(0), 4)
            for b, m in zip(bbox_preds, batch_img_metas)
        ])
        preds = bbox_preds.reshape(-1, 4)
        if pos.any():
            w = quality[pos]
            loss_bbox = self.loss_bbox(preds[pos], bbox_targets[pos], w[:, None].expand(-1, 4), avg_factor=avg_factor)
            loss_iou = self.loss_iou(
                bbox_cxcywh_to_xyxy(preds[pos]) * factors[pos],
                bbox_cxcywh_to_xyxy(bbox_targets[pos]) * factors[pos],
                w,
                avg_factor=avg_factor)
        else:  # keep the graph connected so DDP sees every parameter used
            loss_bbox = preds.sum() * 0
            loss_iou = preds.sum() * 0
        return loss_cls, loss_bbox, loss_iou

    # ------------------------------------------------------------------ inference
    def _predict_by_feat_single(self, cls_score: Tensor, bbox_pred: Tensor, img_meta: dict,
                                rescale: bool = True) -> InstanceData:
        if not self.use_nms:
            return super()._predict_by_feat_single(cls_score, bbox_pred, img_meta, rescale)
        results = self.nms_predict_single(cls_score, bbox_pred, img_meta, **self.nms_cfg)
        if rescale:
            assert img_meta.get('scale_factor') is not None
            results.bboxes = results.bboxes / results.bboxes.new_tensor(img_meta['scale_factor']).repeat((1, 2))
        return results

    def nms_predict_single(self, cls_score: Tensor, bbox_pred: Tensor, img_meta: dict, score_thr: float = 0.01,
                           iou_threshold: float = 0.6, max_per_img: int = 300) -> InstanceData:
        """Class-wise NMS over all (query, class) pairs (mmdet's ``multiclass_nms``), boxes in the network input
        frame (no rescale). In fp32 also under autocast (mmcv's CPU NMS takes no bf16; thresholds on fp32 scores)."""
        img_h, img_w = img_meta['img_shape']
        cls_score, bbox_pred = cls_score.float(), bbox_pred.float()
        scores = cls_score.sigmoid()
        boxes = bbox_cxcywh_to_xyxy(bbox_pred) * bbox_pred.new_tensor([img_w, img_h, img_w, img_h])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, img_w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, img_h)
        with_bg = torch.cat([scores, scores.new_zeros((scores.size(0), 1))], dim=1)  # multiclass_nms drops the last
        dets, labels = multiclass_nms(boxes, with_bg, score_thr, dict(type='nms', iou_threshold=iou_threshold),
                                      max_num=max_per_img)
        return InstanceData(bboxes=dets[:, :4], scores=dets[:, 4], labels=labels)

    @torch.no_grad()
    def predict_pseudo(self, hidden_states: Tensor, references: List[Tensor], batch_img_metas: List[dict],
                       nms: bool = True) -> InstanceList:
        """Teacher pseudo-labels: last decoder layer, class-wise NMS (``nms_cfg``), in input-image coords.

        The official code applies NMS to pseudo-labels in both stages; ``nms=False`` keeps the same score
        threshold and top-``max_per_img`` selection without suppression.
        """
        all_cls, all_bbox = self(hidden_states, references)
        cfg = dict(self.nms_cfg)
        if not nms:
            cfg['iou_threshold'] = 1.0  # IoU never exceeds 1: nothing is suppressed
        return [self.nms_predict_single(c, b, m, **cfg) for c, b, m in zip(all_cls[-1], all_bbox[-1], batch_img_metas)]
