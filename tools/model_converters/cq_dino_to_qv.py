#!/usr/bin/env python
# Copyright (c) queryvision_mm contributors. All rights reserved.
"""Convert an official CQ-DINO checkpoint (RedAIGC/CQ-DINO, a fork of mmdet 3.3) to our ``QVCQDINO``.

    python tools/model_converters/cq_dino_to_qv.py IN OUT [--config configs/cq_dino/v3det_swinb.py]
        [--allow-missing PATTERN] [--allow-unmapped PATTERN]

What changes (read in the official code, RedAIGC/CQ-DINO @6c8e60f unless noted):

* the selector (``mmdet/models/language_models/learnable_category_query_tree.py``, ``..._v3det_tree_swinl.py``,
  ``..._coco_selfatten_swinl.py``): ``label_embed`` -> ``category_embed``, ``fc`` -> ``scorer``; the tagging head
  (``tagbertmodel.py`` @f5300b34: BERT layers whose self-attention and embeddings are deleted) per layer
  ``crossattention.self.{query,key,value}.weight`` -> ``cross_attn.{q,k,v}_proj_weight``, their three biases ->
  ``cross_attn.in_proj_bias`` (concatenated q, k, v), ``crossattention.output.dense`` -> ``cross_attn.out_proj``,
  ``crossattention.output.LayerNorm`` -> ``norm1``, ``intermediate.dense`` -> ``ffn.0``, ``output.dense`` ->
  ``ffn.3``, ``output.LayerNorm`` -> ``norm2``; the COCO ``label_attn.self_attn`` / ``label_attn.norm`` ->
  ``relation.attn`` / ``relation.norm`` (the official module attends over length-1 sequences: evaluate with
  ``model.language_model.relation.degenerate_compat=True`` to reproduce it);
* the Swin backbone (``mmdet/models/backbones/cqswin.py``, ``TryPatchMerging`` in
  ``mmdet/models/layers/transformer/utils.py``) concatenates the 2x2 neighbours in the original Swin order
  (x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]) while mmdet's ``PatchMerging`` uses ``nn.Unfold``'s
  order: ``downsample.reduction.weight`` (input channels) and ``downsample.norm.{weight,bias}`` are reordered with
  mmdet's own ``swin_converter`` (``mmdet/models/backbones/swin.py``);
* everything else (neck, encoder ``layers`` / ``fusion_layers``, decoder, head, queries, DN embedding,
  ``text_feat_map``) has mmdet 3.3's names in both and is copied.

The output is checked against the model of ``--config`` (default: from the checkpoint — ``label_attn`` -> COCO
Swin-L, image projection from 1536 channels -> V3Det Swin-L, from 1024 -> V3Det Swin-B): every key mapped, every
model key present, equal shapes, or an error listing the keys (see ``_official_common.py``).
"""
import argparse
import os.path as osp
import re
import sys
from collections import OrderedDict
from typing import Dict, List, Tuple

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _official_common import (REPO_ROOT, ConversionError, add_common_args, build_target_state_dict,  # noqa: E402
                              finalize, import_plugin, load_source, write_converted)

OFFICIAL_REPO = 'RedAIGC/CQ-DINO'
_TAG = r'language_model\.tagging_head\.encoder\.layer\.(\d+)\.'
_LM = 'language_model.'
# (source pattern, target template); full matches, first rule wins
RENAMES = [
    (_TAG + r'crossattention\.self\.query\.weight', _LM + r'layers.\1.cross_attn.q_proj_weight'),
    (_TAG + r'crossattention\.self\.key\.weight', _LM + r'layers.\1.cross_attn.k_proj_weight'),
    (_TAG + r'crossattention\.self\.value\.weight', _LM + r'layers.\1.cross_attn.v_proj_weight'),
    (_TAG + r'crossattention\.output\.dense\.(weight|bias)', _LM + r'layers.\1.cross_attn.out_proj.\2'),
    (_TAG + r'crossattention\.output\.LayerNorm\.(weight|bias)', _LM + r'layers.\1.norm1.\2'),
    (_TAG + r'intermediate\.dense\.(weight|bias)', _LM + r'layers.\1.ffn.0.\2'),
    (_TAG + r'output\.dense\.(weight|bias)', _LM + r'layers.\1.ffn.3.\2'),
    (_TAG + r'output\.LayerNorm\.(weight|bias)', _LM + r'layers.\1.norm2.\2'),
    (r'language_model\.label_embed', _LM + 'category_embed'),
    (r'language_model\.fc\.(weight|bias)', _LM + r'scorer.\1'),
    (r'language_model\.(wordvec_proj|image_proj|label_norm)\.(weight|bias)', _LM + r'\1.\2'),
    (r'language_model\.label_attn\.self_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)',
     _LM + r'relation.attn.\1'),
    (r'language_model\.label_attn\.norm\.(weight|bias)', _LM + r'relation.norm.\1'),
    # same mmdet 3.3 modules on both sides
    (r'((?:backbone|neck|decoder|bbox_head|dn_query_generator|query_embedding|memory_trans_fc|memory_trans_norm|'
     r'text_feat_map)\..+)', r'\1'),
    (r'(encoder\.(?:layers|fusion_layers)\..+)', r'\1'),
    (r'(level_embed)', r'\1'),
]
RENAMES = [(re.compile(p), t) for p, t in RENAMES]
QKV_BIAS = re.compile(_TAG + r'crossattention\.self\.(query|key|value)\.bias')
DOWNSAMPLE = re.compile(r'backbone\.stages\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)')


def swin_to_unfold_order(key: str, value):
    """``TryPatchMerging`` (original Swin concat order) weights -> mmdet ``PatchMerging`` (``nn.Unfold`` order), by
    mmdet's ``swin_converter``, which does this for the original Swin release (keys ``layers.{i}.downsample.*``)."""
    from mmdet.models.backbones.swin import swin_converter
    m = DOWNSAMPLE.fullmatch(key)
    stage, name = m.group(1), m.group(2)
    out = swin_converter({f'layers.{stage}.downsample.{name}': value})
    return out[f'backbone.stages.{stage}.downsample.{name}']


def convert(state: Dict) -> Tuple['OrderedDict', Dict[str, str], List[str], List[str]]:
    """Official CQ-DINO state dict -> (converted state dict, target key -> source key(s), unmapped source keys,
    notes)."""
    import torch
    out, sources, unmapped, notes = OrderedDict(), {}, [], []
    biases: Dict[str, Dict[str, str]] = {}
    reordered = 0
    for key, value in state.items():
        m = QKV_BIAS.fullmatch(key)
        if m:
            biases.setdefault(m.group(1), {})[m.group(2)] = key
            continue
        for pattern, template in RENAMES:
            m = pattern.fullmatch(key)
            if m:
                new = m.expand(template)
                if DOWNSAMPLE.fullmatch(new):
                    value = swin_to_unfold_order(new, value)
                    reordered += 1
                out[new], sources[new] = value, key
                break
        else:
            unmapped.append(key)
    for layer, parts in sorted(biases.items(), key=lambda kv: int(kv[0])):
        if set(parts) != {'query', 'key', 'value'}:
            unmapped += sorted(parts.values())  # incomplete q/k/v: cannot form in_proj_bias
            continue
        new = f'{_LM}layers.{layer}.cross_attn.in_proj_bias'
        out[new] = torch.cat([state[parts[n]] for n in ('query', 'key', 'value')])
        sources[new] = ' + '.join(parts[n] for n in ('query', 'key', 'value'))
    if reordered:
        notes.append(f'{reordered} Swin patch-merging tensors reordered from the original Swin concat order '
                     '(TryPatchMerging) to nn.Unfold order (mmdet PatchMerging)')
    if any(k.startswith('language_model.label_attn.') for k in state):
        notes.append('COCO selector: the official label self-attention attends over length-1 sequences; evaluate '
                     'with --cfg-options model.language_model.relation.degenerate_compat=True to reproduce it')
    notes.append('tagging-head LayerNorms: official eps 1e-12 (q2l_config.json), ours 1e-5')
    return out, sources, unmapped, notes


def default_config(state: Dict) -> str:
    """Our shipped config of the official checkpoint's architecture."""
    if any(k.startswith('language_model.label_attn.') for k in state):
        name = 'coco_swinl.py'
    else:
        proj = state.get('language_model.image_proj.weight')
        if proj is None:
            raise ConversionError('no language_model.image_proj.weight: not an official CQ-DINO checkpoint? '
                                  'Give --config explicitly')
        name = {1536: 'v3det_swinl.py', 1024: 'v3det_swinb.py'}.get(int(proj.shape[1]))
        if name is None:
            raise ConversionError(f'image projection from {proj.shape[1]} channels: no shipped config; give --config')
    return osp.join(REPO_ROOT, 'configs', 'cq_dino', name)


def prepare_model_cfg(model_cfg):
    """Build the model without its side files (class embeddings, class names, V3Det tree): same keys and shapes
    (the tree aggregator has no parameters)."""
    lm = model_cfg.language_model
    lm.embed_file = None
    lm.class_names = None
    if lm.get('relation') is not None and lm.relation.get('type') == 'QVTreeAggregator':
        lm.relation = None
        lm.label_norm = True  # the tree variant's structure (LayerNorm after the relation)
    model_cfg.hierarchy = None
    if model_cfg.get('backbone') is not None:
        model_cfg.backbone.init_cfg = None
    return model_cfg


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='official CQ-DINO checkpoint -> queryvision_mm QVCQDINO')
    add_common_args(parser, 'chosen from the checkpoint (configs/cq_dino/{v3det_swinb,v3det_swinl,coco_swinl}.py)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import_plugin()
    try:
        state, src_meta = load_source(args.src)
        config = args.config or default_config(state)
        converted, sources, unmapped, notes = convert(state)
        target = build_target_state_dict(config, prepare_model_cfg, args.cfg_options)
        out, report = finalize(converted, sources, unmapped, target, args.allow_missing, args.allow_unmapped)
    except ConversionError as err:
        print(f'error: {args.src}: {err}', file=sys.stderr)
        return 1
    return write_converted(args, config, out, report, notes, src_meta, OFFICIAL_REPO,
                           'tools/model_converters/cq_dino_to_qv.py')


if __name__ == '__main__':
    sys.exit(main())
