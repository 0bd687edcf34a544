"""CQ-DINO (vast-vocabulary detection; arXiv 2503.18430 §3: category queries, image-guided top-K selection, the
detector over the selected categories): mmdet's Grounding DINO with learnable, image-selected category queries in
place of the BERT text branch."""
import json
import logging
import os.path as osp
from contextlib import nullcontext
from typing import Dict, List, Optional, Set, Tuple, Union

import torch
from torch import Tensor, nn

from mmengine.fileio import list_from_file
from mmengine.logging import print_log
from mmengine.structures import InstanceData

from mmdet.models.dense_heads import GroundingDINOHead
from mmdet.models.detectors import GroundingDINO
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.utils import ConfigType, OptConfigType

from ...datasets.category_hierarchy import CategoryHierarchy
from ..layers.activation_checkpoint import checkpoint_module


def load_class_names(path: str) -> List[str]:
    """The class names of a dataset in label order, from the file its dataset class reads them from: a text file,
    one name per line (V3Det's ``category_name_13204_v3det_2023_v1.txt``, read as mmdet's ``V3DetDataset`` reads it,
    with ``mmengine.list_from_file``), or a COCO-format JSON (``categories`` sorted by id, mmdet's ``CocoDataset``
    label order; the order ``tools/misc/make_category_embeddings.py`` writes)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'class-name file not found: {path} (model.language_model.class_names)')
    if path.endswith('.json'):
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
        cats = data.get('categories') if isinstance(data, dict) else None
        if not cats:
            raise ValueError(f'{path}: no "categories" list (model.language_model.class_names expects a class-name '
                             'text file or a COCO-format JSON)')
        return [c['name'] for c in sorted(cats, key=lambda c: c['id'])]
    return list_from_file(path)  # exactly the dataset's list (mmdet's V3DetDataset reads its label_file so)


def resolve_class_names(language_model: ConfigType) -> ConfigType:
    """The selector config with ``class_names`` as a list: a path (str) is read with :func:`load_class_names`, so that
    the embedding file's class list is checked name by name against the dataset's (not only its length). Without
    ``embed_file`` there is nothing to check and a path is not read (the file need not exist then)."""
    names = language_model.get('class_names')
    if language_model.get('embed_file') is None:
        return language_model if not isinstance(names, str) else dict(language_model, class_names=None)
    if names is None:
        print_log(f'QVCQDINO: embed_file={language_model["embed_file"]} without language_model.class_names: only the '
                  'number of classes of the file is checked, not their names and order', 'current', logging.WARNING)
        return language_model
    if isinstance(names, str):
        return dict(language_model, class_names=load_class_names(names))
    return language_model


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
            ``contrastive_cfg.max_text_len``. Its ``class_names`` (a list, or the path of the dataset's class-name
            file: a text file, one name per line, or a COCO JSON; see :func:`load_class_names`) is checked name by
            name against the ``embed_file``'s class list (error naming the file and the first differing index).
        selector_loss (dict): Loss of the selector logits. Defaults to CQ-DINO's V3Det ASL
            (gamma_neg 7, gamma_pos 0, clip 0.05, sum).
        hierarchy (dict, optional): ``dict(tree_file=..., category_ids=None, root=None, strict=False)`` for the
            parent mask of the selector loss (category ids default to 1..C; ``root`` / ``strict``: see
            :meth:`CategoryHierarchy.from_v3det_tree`).
        text_self_attention (bool): Keep Grounding DINO's text self-attention layers in the encoder. CQ-DINO has
            none (the K category tokens do not attend to each other there). Defaults to False.
        selector_only (bool): Stage-1 pre-training "to establish category recall": only the backbone and the
            selector are trained (every other parameter gets ``requires_grad=False``, and so does every backbone
            parameter that cannot reach the backbone's last output, e.g. Swin's output norms of the other
            ``out_indices``, found by one probe backward at construction: DDP then needs no
            ``find_unused_parameters``), ``loss`` returns the selector loss and recall, and ``predict`` returns the
            selected categories (``selected_categories``, ``selector_scores``) with empty ``pred_instances``
            (evaluate with :class:`QVCategoryRecallMetric`). The stage-2 config loads this checkpoint with
            ``load_from``. Defaults to False.
        use_autocast (bool): Run backbone + neck under CUDA autocast (``autocast_dtype``) and the rest in fp32, as
            the official model does with a plain optimizer wrapper. Without effect on CPU and inside an outer
            autocast (``--amp``: :class:`QVAmpOptimWrapper` / ``AmpOptimWrapper`` autocast the whole forward,
            feature path included). Defaults to False.
        autocast_dtype (str): ``'float16'`` (official) or ``'bfloat16'``.
        vectorised_slot_scores (bool): Build a ``GroundingDINOHead`` bbox head as :class:`QVCQDINOHead` (same
            parameters and losses; converts the K slot scores to class scores in one tensor operation instead of
            mmdet's Python loop over the slots, same numbers). Defaults to True.
        encoder.num_cp (int): Activation checkpointing of the first ``num_cp`` encoder layers (fusion and
            deformable layer) with ``torch.utils.checkpoint`` (fairscale not needed; official: 6).
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
                 use_autocast: bool = False,
                 autocast_dtype: str = 'float16',
                 vectorised_slot_scores: bool = True,
                 **kwargs) -> None:
        self._text_self_attention = text_self_attention
        head = kwargs.get('bbox_head')
        if vectorised_slot_scores and head is not None and head.get('type') in ('GroundingDINOHead', GroundingDINOHead):
            kwargs['bbox_head'] = dict(head, type='QVCQDINOHead')
        super().__init__(resolve_class_names(language_model), *args, **kwargs)
        self.use_autocast = use_autocast
        if autocast_dtype not in ('float16', 'bfloat16'):
            raise ValueError(f"QVCQDINO: autocast_dtype must be 'float16' or 'bfloat16', got {autocast_dtype!r}")
        self.autocast_dtype = getattr(torch, autocast_dtype)
        self.selector_only = selector_only
        if selector_only:
            for name, param in self.named_parameters():
                if not name.startswith(('backbone.', 'language_model.')):
                    param.requires_grad_(False)
            for name in self.unreachable_backbone_params():
                self.backbone.get_parameter(name).requires_grad_(False)
        k = self.language_model.topk
        if self.bbox_head.max_text_len != k:
            raise ValueError(f'QVCQDINO: the selector keeps topk={k} categories but the head expects '
                             f'contrastive_cfg.max_text_len={self.bbox_head.max_text_len}; they must be equal')
        self.selector_loss = MODELS.build(selector_loss)
        self.hierarchy = None
        if hierarchy is not None:
            ids = hierarchy.get('category_ids') or list(range(1, self.language_model.num_classes + 1))
            self.hierarchy = CategoryHierarchy.from_v3det_tree(
                hierarchy['tree_file'], ids, root=hierarchy.get('root'), strict=hierarchy.get('strict', False))

    def _init_layers(self) -> None:
        # mmdet's encoder would wrap its first num_cp layers with fairscale; we checkpoint them with torch instead
        num_cp = max(int(self.encoder.get('num_cp', -1)), 0)
        self.encoder = dict(self.encoder, num_cp=-1)
        super()._init_layers()
        if not self._text_self_attention:
            self.encoder.text_layers = nn.ModuleList()  # GroundingDINO's encoder skips them when empty
        if num_cp > self.encoder.num_layers:
            raise ValueError(f'QVCQDINO: encoder.num_cp={num_cp} > encoder.num_layers={self.encoder.num_layers}')
        for i in range(num_cp):
            checkpoint_module(self.encoder.layers[i])
            checkpoint_module(self.encoder.fusion_layers[i])
            if self.encoder.text_layers:
                checkpoint_module(self.encoder.text_layers[i])
        self.encoder.num_cp = num_cp

    def unreachable_backbone_params(self) -> Set[str]:
        """Names of trainable backbone parameters that get no gradient from the backbone's last output (the only
        output the selector reads), found by one backward of a 64 x 64 probe (backbone in eval mode, state and
        buffers and the global random state untouched; reached parameters' gradients are dropped as they arrive).
        E.g. Swin's ``norm{i}`` of every ``out_indices`` entry but the last; none for ResNet."""
        params = {n: p for n, p in self.backbone.named_parameters() if p.requires_grad}
        reached = set()

        def seen(param: Tensor) -> None:
            reached.add(id(param))
            param.grad = None

        hooks = [p.register_post_accumulate_grad_hook(seen) for p in params.values()]
        was_training = self.backbone.training
        try:
            self.backbone.eval()
            with torch.enable_grad():
                probe = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
                self.backbone(probe)[-1].float().sum().backward()
        finally:
            for h in hooks:
                h.remove()
            self.backbone.train(was_training)
        return {n for n, p in params.items() if id(p) not in reached}

    # ------------------------------------------------------------------ shared pieces
    def _features(self, batch_inputs: Tensor, use_neck: bool = True) -> Tuple[Tensor, Optional[Tuple[Tensor]]]:
        """Backbone (+ neck): raw C5 for the selector and the neck's levels for the transformer. Under ``--amp``
        both run in the wrapper's autocast; with ``use_autocast`` on CUDA in their own (then cast back to fp32)."""
        dev = batch_inputs.device.type
        own = self.use_autocast and dev == 'cuda' and not torch.is_autocast_enabled(dev)
        with torch.autocast(dev, dtype=self.autocast_dtype) if own else nullcontext():
            outs = self.backbone(batch_inputs)
            feats = (self.neck(outs) if self.with_neck else outs) if use_neck else None
        c5 = outs[-1]
        if own:
            c5 = c5.float()
            feats = None if feats is None else tuple(f.float() for f in feats)
        return c5, feats

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
        # fp32 even under autocast: a sum over B x C (13,204) terms
        return dict(loss_selector=self.selector_loss(logits.float(), targets, weight=weights),
                    selector_recall=self.language_model.recall_at_k(indices, gt_labels).detach())

    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> Union[dict, list]:
        gt_labels = [s.gt_instances.labels for s in batch_data_samples]
        if self.selector_only:
            logits = self.language_model(self._features(batch_inputs, use_neck=False)[0], return_tokens=False)['logits']
            return self._selector_losses(logits, logits.detach().topk(self.language_model.topk, 1).indices, gt_labels)
        c5, feats = self._features(batch_inputs)
        # chunked scoring + top-K in one pass (the B x C x D tokens of all categories are never held)
        sel = picked = self.language_model.forward_select(c5, gt_labels if self.training else None)
        k = picked['indices'].size(1)
        samples = []
        for sample, labels, idx in zip(batch_data_samples, gt_labels, picked['indices']):
            local = self.language_model.local_labels(labels, idx)
            # ``clone`` is shallow (the copy would share ``gt_instances`` with the caller): give the copy its own
            # InstanceData so that the slot labels / positive maps below never reach the caller's sample
            new = sample.clone()
            new.gt_instances = gt = sample.gt_instances.clone()
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
            logits = self.language_model(self._features(batch_inputs, use_neck=False)[0], return_tokens=False)['logits']
            scores, indices = logits.sigmoid().topk(self.language_model.topk, dim=1)
            for sample, idx, sc in zip(batch_data_samples, indices, scores):
                sample.pred_instances = InstanceData(
                    bboxes=sc.new_zeros((0, 4)), scores=sc.new_zeros((0, )), labels=idx.new_zeros((0, )))
                sample.selected_categories, sample.selector_scores = idx, sc
            return batch_data_samples
        c5, feats = self._features(batch_inputs)
        sel = picked = self.language_model.forward_select(c5)
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
