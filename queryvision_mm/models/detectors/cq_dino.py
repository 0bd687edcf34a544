"""CQ-DINO (vast-vocabulary detection): mmdet's Grounding DINO with learnable, image-selected category queries in
place of the BERT text branch."""
import copy
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from mmengine.structures import InstanceData

from mmdet.models.detectors import GroundingDINO
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.utils import ConfigType, OptConfigType

from ...datasets.category_hierarchy import CategoryHierarchy


@MODELS.register_module()
class QVCQDINO(GroundingDINO):
    """CQ-DINO as a subclass of :class:`mmdet.models.GroundingDINO`.

    ``language_model`` is a :class:`QVCategoryQuerySelector`: from the backbone's last stage it scores all C
    categories, and the top-K image-conditioned category tokens are the "text" of Grounding DINO (mapped to the
    transformer width by GroundingDINO's ``text_feat_map``). Classification is the head's contrastive dot product over
    these K tokens; every ground truth's target is the slot of its category in its image's list (all-zero if the
    category was not selected, as in the official code, unless ``force_gt_in_topk``), and predictions are mapped back
    to global label ids by index (never by name). The selector is trained with ``selector_loss`` (asymmetric loss on
    image-level multi-hot targets from the box labels, with the hierarchy's parent mask when ``hierarchy`` is given).

    Args:
        language_model (dict): Config of :class:`QVCategoryQuerySelector`; its ``topk`` must equal the head's
            ``contrastive_cfg.max_text_len``.
        selector_loss (dict): Loss of the selector logits. Defaults to CQ-DINO's V3Det ASL
            (gamma_neg 7, gamma_pos 0, clip 0.05, sum).
        hierarchy (dict, optional): ``dict(tree_file=..., category_ids=None)`` for the parent mask of the selector
            loss (category ids default to 1..C).
        text_self_attention (bool): Keep Grounding DINO's text self-attention layers in the encoder. CQ-DINO has
            none (the K category tokens do not attend to each other there). Defaults to False.
        selector_only (bool): Stage-1 pre-training "to establish category recall": only the backbone and the
            selector are trained (every other parameter gets ``requires_grad=False``), ``loss`` returns the selector
            loss and recall, and ``predict`` returns the selected categories (``selected_categories``,
            ``selector_scores``) with empty ``pred_instances`` (evaluate with :class:`QVCategoryRecallMetric`).
            The stage-2 config loads this checkpoint with ``load_from``. Defaults to False.
        Others: see :class:`mmdet.models.GroundingDINO`.
    """

    def __init__(self,
                 language_model: ConfigType,
                 *args,
                 selector_loss: ConfigType = dict(
                     type='QVAsymmetricLoss', gamma_neg=7.0, gamma_pos=0.0, clip=0.05, reduction='sum',
                     loss_weight=1.0),
                 hierarchy: OptConfigType = None,
                 text_self_attention: bool = False,
                 selector_only: bool = False,
                 **kwargs) -> None:
        self._text_self_attention = text_self_attention
        super().__init__(language_model, *args, **kwargs)
        self.selector_only = selector_only
        if selector_only:
            for name, param in self.named_parameters():
                if not name.startswith(('backbone.', 'language_model.')):
                    param.requires_grad_(False)
        k = self.language_model.topk
        if self.bbox_head.max_text_len != k:
            raise ValueError(f'QVCQDINO: the selector keeps topk={k} categories but the head expects '
                             f'contrastive_cfg.max_text_len={self.bbox_head.max_text_len}; they must be equal')
        self.selector_loss = MODELS.build(selector_loss)
        self.hierarchy = None
        if hierarchy is not None:
            ids = hierarchy.get('category_ids') or list(range(1, self.language_model.num_classes + 1))
            self.hierarchy = CategoryHierarchy.from_v3det_tree(hierarchy['tree_file'], ids)

    def _init_layers(self) -> None:
        super()._init_layers()
        if not self._text_self_attention:
            self.encoder.text_layers = nn.ModuleList()  # GroundingDINO's encoder skips them when empty

    # ------------------------------------------------------------------ shared pieces
    def _features(self, batch_inputs: Tensor) -> Tuple[Tensor, Tuple[Tensor]]:
        outs = self.backbone(batch_inputs)
        return outs[-1], (self.neck(outs) if self.with_neck else outs)

    def _text_dict(self, tokens: Tensor) -> Dict[str, Tensor]:
        b, k, _ = tokens.shape
        dev = tokens.device
        return dict(
            embedded=self.text_feat_map(tokens),
            text_token_mask=torch.ones(b, k, dtype=torch.bool, device=dev),
            position_ids=torch.arange(k, device=dev).expand(b, k),
            masks=torch.ones(b, k, k, dtype=torch.bool, device=dev))

    # ------------------------------------------------------------------ training
    def _selector_losses(self, logits: Tensor, indices: Tensor, gt_labels: List[Tensor]) -> dict:
        targets, weights = self.language_model.image_targets(gt_labels, self.hierarchy)
        return dict(loss_selector=self.selector_loss(logits, targets, weight=weights),
                    selector_recall=self.language_model.recall_at_k(indices, gt_labels).detach())

    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> Union[dict, list]:
        gt_labels = [s.gt_instances.labels for s in batch_data_samples]
        if self.selector_only:
            logits = self.language_model(self.backbone(batch_inputs)[-1])['logits']
            return self._selector_losses(logits, logits.detach().topk(self.language_model.topk, 1).indices, gt_labels)
        c5, feats = self._features(batch_inputs)
        sel = self.language_model(c5)
        picked = self.language_model.select(sel['logits'], sel['tokens'], gt_labels if self.training else None)
        k = picked['indices'].size(1)
        samples = []
        for sample, labels, idx in zip(batch_data_samples, gt_labels, picked['indices']):
            local = self.language_model.local_labels(labels, idx)
            new = sample.clone()
            gt = new.gt_instances
            positive = labels.new_zeros((len(labels), k), dtype=torch.float)
            hit = local >= 0
            positive[hit.nonzero().flatten(), local[hit]] = 1
            gt.positive_maps = positive
            gt.text_token_mask = torch.ones(len(labels), k, dtype=torch.bool, device=labels.device)
            # denoising queries embed slot positions (as in Grounding DINO); an unselected category uses slot K
            gt.labels = torch.where(hit, local, local.new_full((), k))
            samples.append(new)
        head_inputs = self.forward_transformer(feats, self._text_dict(picked['tokens']), samples)
        losses = self.bbox_head.loss(**head_inputs, batch_data_samples=samples)
        losses.update(self._selector_losses(sel['logits'], picked['indices'], gt_labels))
        return losses

    # ------------------------------------------------------------------ inference
    def predict(self, batch_inputs: Tensor, batch_data_samples: SampleList, rescale: bool = True) -> SampleList:
        if self.selector_only:
            logits = self.language_model(self.backbone(batch_inputs)[-1])['logits']
            scores, indices = logits.sigmoid().topk(self.language_model.topk, dim=1)
            for sample, idx, sc in zip(batch_data_samples, indices, scores):
                sample.pred_instances = InstanceData(
                    bboxes=sc.new_zeros((0, 4)), scores=sc.new_zeros((0, )), labels=idx.new_zeros((0, )))
                sample.selected_categories, sample.selector_scores = idx, sc
            return batch_data_samples
        c5, feats = self._features(batch_inputs)
        sel = self.language_model(c5)
        picked = self.language_model.select(sel['logits'], sel['tokens'])
        k = picked['indices'].size(1)
        slot_map = {i + 1: [i] for i in range(k)}  # class i <-> slot i (GroundingDINOHead's 1-based convention)
        for sample in batch_data_samples:
            sample.token_positive_map = slot_map
        head_inputs = self.forward_transformer(feats, self._text_dict(picked['tokens']), batch_data_samples)
        results = self.bbox_head.predict(**head_inputs, rescale=rescale, batch_data_samples=batch_data_samples)
        sel_scores = sel['logits'].sigmoid().gather(1, picked['indices'])  # not fused into the box scores (official)
        for sample, res, idx, sc in zip(batch_data_samples, results, picked['indices'], sel_scores):
            res.labels = idx[res.labels]  # slot -> global label id
            sample.pred_instances = res
            sample.selected_categories, sample.selector_scores = idx, sc
        return batch_data_samples
