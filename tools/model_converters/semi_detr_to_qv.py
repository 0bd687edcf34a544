#!/usr/bin/env python
# Copyright (c) queryvision_mm contributors. All rights reserved.
"""Convert an official Semi-DETR checkpoint (JCZ404/Semi-DETR, mmdet 2.16) to our ``QVSemiDETR`` (or
``QVSparseSemiDETR``) with its mmdet 3.3 DINO student and teacher.

    python tools/model_converters/semi_detr_to_qv.py IN OUT
        [--config configs/semi_detr/coco_10pct.py] [--stage one-to-one|one-to-many] [--allow-missing PATTERN]
        [--allow-unmapped PATTERN]

Official layout (read in JCZ404/Semi-DETR @6afea66): ``DinoDetrSSOD`` (``detr_ssod/models/dino_detr_ssod.py``,
``multi_stream_detector.py``) holds ``teacher.`` and ``student.`` ``DINODETR`` detectors and a ``projector``
(conv1, bn1, conv2, bn2, fc1, bn, fc2); the supervised baseline (``configs/dino_detr/dino_detr_r50_8x2_12e_coco.py``)
is one ``DINODETR`` without prefixes (duplicated into student and teacher here, as the official
``_load_from_state_dict`` does). ``DINODETR`` (``detr_od/models/dino_detr.py``) has no neck; its head
(``detr_od/models/dense_heads/dino_detr_ssod_head.py`` / ``dino_detr_head.py``) holds the IDEA-DINO transformer
(``detr_od/models/utils/transformer.py``). Per detector:

==============================================================  ==============================================
official (``bbox_head.`` ...)                                    ours (mmdet 3.3 ``DINO``)
==============================================================  ==============================================
``input_proj.{i}.0`` / ``.1`` (1x1 conv + GN; 3x3 stride-2)      ``neck.convs.{i}.conv`` / ``.gn``;
                                                                 ``neck.extra_convs.{j}.conv`` / ``.gn``
``transformer.level_embed``                                      ``level_embed``
``transformer.tgt_embed``                                        ``query_embedding``
``transformer.enc_output`` / ``enc_output_norm``                 ``memory_trans_fc`` / ``memory_trans_norm``
``transformer.encoder.layers.{i}.self_attn.*`` (MSDeformAttn)    ``encoder.layers.{i}.self_attn.*``
encoder ``norm1``, ``norm2``, ``linear1``, ``linear2``           ``norms.0``, ``norms.1``, ``ffn.layers.0.0``,
                                                                 ``ffn.layers.1``
decoder ``self_attn.*`` (nn.MultiheadAttention)                  ``self_attn.attn.*``
decoder ``cross_attn.*`` (MSDeformAttn)                          ``cross_attn.*``
decoder ``norm2`` (after self-attn), ``norm1`` (after cross-     ``norms.0``, ``norms.1``, ``norms.2``
attn), ``norm3`` (after FFN)
``transformer.decoder.ref_point_head`` / ``.norm``               ``decoder.ref_point_head`` / ``decoder.norm``
``fc_cls.{i}`` / ``fc_enc_cls`` (shared over decoder layers)     ``bbox_head.cls_branches.{i}`` / ``.{L}``
``fc_reg.{i}.layers.{j}`` / ``fc_enc_reg.layers.{j}``            ``bbox_head.reg_branches.{i}.{2j}`` / ``.{L}.{2j}``
``label_enc`` (dn_labelbook_size + 1 = 82 rows)                  ``dn_query_generator.label_embedding`` (first
                                                                 num_classes rows: the others are never indexed,
                                                                 labels are ground truth or randint(0, num_classes))
==============================================================  ==============================================

``backbone.*`` (ResNet) keeps its names. The official input projections are ``nn.Conv2d`` with bias; mmdet's DINO
neck (``ChannelMapper``, ``bias='auto'`` with GroupNorm) has none, and GroupNorm does not cancel a per-channel bias:
our configs set ``neck.bias=True``; a config without it is refused (with the ``--cfg-options`` override to use). Our wrapper's ``one_to_many_stage`` buffer is set from ``--stage``
(default ``one-to-one``: the released checkpoints are the last iterations, after the switch). Into a Sparse
Semi-DETR config: ``--allow-unmapped 'projector.*' --allow-missing 'qrm.*'`` (the QRM then starts untrained).
"""
import argparse
import os.path as osp
import re
import sys
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _official_common import (REPO_ROOT, ConversionError, add_common_args, build_target_state_dict,  # noqa: E402
                              finalize, import_plugin, load_source, matches, write_converted)

OFFICIAL_REPO = 'JCZ404/Semi-DETR'
_T = r'bbox_head\.transformer\.'
_ATTN = r'(sampling_offsets|attention_weights|value_proj|output_proj)\.(weight|bias)'
_WB = r'(weight|bias)'
_NORM_DEC = {'2': '0', '1': '1', '3': '2'}  # official decoder norm{k} -> our norms.{v}
# (source pattern, target template or callable(match) -> target); full matches, first rule wins
RENAMES = [
    (r'(backbone\..+)', r'\1'),
    (_T + r'level_embed', 'level_embed'),
    (_T + r'tgt_embed\.weight', 'query_embedding.weight'),
    (_T + r'enc_output\.' + _WB, r'memory_trans_fc.\1'),
    (_T + r'enc_output_norm\.' + _WB, r'memory_trans_norm.\1'),
    (_T + r'encoder\.layers\.(\d+)\.self_attn\.' + _ATTN, r'encoder.layers.\1.self_attn.\2.\3'),
    (_T + r'encoder\.layers\.(\d+)\.norm([12])\.' + _WB,
     lambda m: f'encoder.layers.{m[1]}.norms.{int(m[2]) - 1}.{m[3]}'),
    (_T + r'(encoder|decoder)\.layers\.(\d+)\.linear1\.' + _WB, r'\1.layers.\2.ffn.layers.0.0.\3'),
    (_T + r'(encoder|decoder)\.layers\.(\d+)\.linear2\.' + _WB, r'\1.layers.\2.ffn.layers.1.\3'),
    (_T + r'decoder\.layers\.(\d+)\.cross_attn\.' + _ATTN, r'decoder.layers.\1.cross_attn.\2.\3'),
    (_T + r'decoder\.layers\.(\d+)\.self_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)',
     r'decoder.layers.\1.self_attn.attn.\2'),
    (_T + r'decoder\.layers\.(\d+)\.norm([123])\.' + _WB,
     lambda m: f'decoder.layers.{m[1]}.norms.{_NORM_DEC[m[2]]}.{m[3]}'),
    (_T + r'decoder\.ref_point_head\.layers\.(\d+)\.' + _WB, r'decoder.ref_point_head.layers.\1.\2'),
    (_T + r'decoder\.norm\.' + _WB, r'decoder.norm.\1'),
    (r'bbox_head\.fc_cls\.(\d+)\.' + _WB, r'bbox_head.cls_branches.\1.\2'),
    (r'bbox_head\.fc_reg\.(\d+)\.layers\.(\d+)\.' + _WB,
     lambda m: f'bbox_head.reg_branches.{m[1]}.{2 * int(m[2])}.{m[3]}'),
]
RENAMES = [(re.compile(p), t) for p, t in RENAMES]
PROJECTOR = {'conv1': 'convs.0', 'bn1': 'convs.1', 'conv2': 'convs.3', 'bn2': 'convs.4', 'fc1': 'mlp.0',
             'bn': 'mlp.1', 'fc2': 'mlp.3'}
PROJECTOR_RE = re.compile(r'projector\.(conv1|bn1|conv2|bn2|fc1|bn|fc2)\.'
                          r'(weight|bias|running_mean|running_var|num_batches_tracked)')
INPUT_PROJ = re.compile(r'bbox_head\.input_proj\.(\d+)\.([01])\.' + _WB)
FC_ENC = re.compile(r'bbox_head\.(fc_enc_cls|fc_enc_reg\.layers\.(\d+))\.' + _WB)
LABEL_ENC = 'bbox_head.label_enc.weight'


def _apply(template, m):
    return template(m) if callable(template) else m.expand(template)


def convert_detector(state: Dict, prefix: str = '') -> Tuple['OrderedDict', Dict[str, str], List[str], List[str]]:
    """One official ``DINODETR`` (keys under ``prefix``) -> mmdet 3.3 ``DINO`` keys (without prefix)."""
    sub = OrderedDict((k[len(prefix):], v) for k, v in state.items() if k.startswith(prefix))
    out, sources, unmapped, notes = OrderedDict(), {}, [], []
    fc_cls = [int(m[1]) for m in (re.fullmatch(r'bbox_head\.fc_cls\.(\d+)\.weight', k) for k in sub) if m]
    num_layers = max(fc_cls) + 1 if fc_cls else None  # decoder layers; the encoder-output branch comes last
    num_classes = int(sub[f'bbox_head.fc_cls.{min(fc_cls)}.weight'].shape[0]) if fc_cls else None
    # input projections: 1x1 convs map backbone levels (ChannelMapper.convs), 3x3 ones are the extra levels
    proj_kernel = {int(m[1]): sub[k].shape[-1] for k in sub for m in [INPUT_PROJ.fullmatch(k)]
                   if m and m[2] == '0' and m[3] == 'weight'}
    num_1x1 = sum(1 for s in proj_kernel.values() if s == 1)
    for key, value in sub.items():
        src = prefix + key
        new: Optional[str] = None
        m = INPUT_PROJ.fullmatch(key)
        if m and int(m[1]) in proj_kernel:
            i = int(m[1])
            part = 'conv' if m[2] == '0' else 'gn'
            new = (f'neck.convs.{i}.{part}.{m[3]}' if proj_kernel[i] == 1 else
                   f'neck.extra_convs.{i - num_1x1}.{part}.{m[3]}')
        elif FC_ENC.fullmatch(key) and num_layers is not None:
            m = FC_ENC.fullmatch(key)
            new = (f'bbox_head.cls_branches.{num_layers}.{m[3]}' if m[1] == 'fc_enc_cls' else
                   f'bbox_head.reg_branches.{num_layers}.{2 * int(m[2])}.{m[3]}')
        elif key == LABEL_ENC and num_classes is not None:
            new = 'dn_query_generator.label_embedding.weight'
            if value.shape[0] > num_classes:
                notes.append(f'{src}: rows {num_classes}..{value.shape[0] - 1} dropped (never indexed: DN labels '
                             f'are ground truth or randint(0, {num_classes}))')
                value = value[:num_classes]
        else:
            for pattern, template in RENAMES:
                m = pattern.fullmatch(key)
                if m:
                    new = _apply(template, m)
                    break
        if new is None:
            unmapped.append(src)
        else:
            out[new], sources[new] = value, src
    return out, sources, unmapped, notes


def convert(state: Dict, semi_target: bool = True, take: str = 'student',
            stage: str = 'one-to-one') -> Tuple['OrderedDict', Dict[str, str], List[str], List[str]]:
    """Official Semi-DETR (``teacher.``/``student.``/``projector.``) or plain ``DINODETR`` state dict -> our keys.

    Args:
        semi_target: the target is our semi-supervised wrapper (``student.``/``teacher.`` + ``projector.`` +
            ``one_to_many_stage``); otherwise a single DINO (from the source's ``take`` detector).
        stage: value of ``one_to_many_stage`` ('one-to-one' after the switch iteration, 'one-to-many' before).
    """
    import torch
    semi_source = any(k.startswith(('student.', 'teacher.')) for k in state)
    out, sources, unmapped, notes = OrderedDict(), {}, [], []

    def add(prefix_src, prefix_dst):
        o, s, u, n = convert_detector(state, prefix_src)
        for k, v in o.items():
            out[prefix_dst + k], sources[prefix_dst + k] = v, s[k]
        unmapped.extend(u)
        notes.extend(n)

    if semi_source:
        subs = [('student.', 'student.'), ('teacher.', 'teacher.')] if semi_target else [(take + '.', '')]
        for src_p, dst_p in subs:
            add(src_p, dst_p)
        used = tuple(p for p, _ in subs)
        for key, value in state.items():
            if key.startswith(used):
                continue
            m = PROJECTOR_RE.fullmatch(key)
            if m and semi_target:
                new = f'projector.{PROJECTOR[m[1]]}.{m[2]}'
                out[new], sources[new] = value, key
            else:  # anything else, and the other detector / projector for a single-DINO target
                unmapped.append(key)
    else:
        if semi_target:
            add('', 'student.')
            add('', 'teacher.')
            notes.append('plain DINODETR checkpoint: copied into student and teacher (official _load_from_state_dict)')
        else:
            add('', '')
        unmapped[:] = sorted(set(unmapped))
    if semi_target:
        if stage not in ('one-to-one', 'one-to-many'):
            raise ConversionError(f"--stage must be 'one-to-one' or 'one-to-many', got {stage!r}")
        out['one_to_many_stage'] = torch.tensor(stage == 'one-to-many')
        sources['one_to_many_stage'] = f'--stage {stage}'
        notes.append(f'one_to_many_stage = {stage == "one-to-many"} (--stage {stage})')
    seen, uniq = set(), []
    for n in notes:
        if n not in seen:
            seen.add(n)
            uniq.append(n)
    return out, sources, unmapped, uniq


NECK_BIAS = re.compile(r'(?:student\.|teacher\.)?neck\.(?:convs|extra_convs)\.\d+\.conv\.bias')


def check_neck_bias(converted: Dict, target: Dict) -> None:
    """The official input projections are ``nn.Conv2d`` with bias before GroupNorm (which does not cancel a
    per-channel bias); mmdet's DINO ChannelMapper (``bias='auto'`` with GN) has none: say how to build it with."""
    if any(NECK_BIAS.fullmatch(k) and k not in target for k in converted):
        raise ConversionError(
            'the official input projections (bbox_head.input_proj.*.0) have conv biases, the neck of --config has '
            'none (mmdet DINO: ChannelMapper bias=\'auto\' with GN). Build it with the biases, here and in '
            'tools/test.py / tools/train.py: --cfg-options model.detector.neck.bias=True (dropping them with '
            "--allow-unmapped '*neck.*.conv.bias' changes the outputs: GroupNorm does not remove per-channel biases)")


def default_config(state: Dict) -> str:
    """``configs/semi_detr/coco_10pct.py`` (80 classes; all COCO configs share the architecture) or ``voc.py``."""
    keys = [k for k in state if re.fullmatch(r'(?:student\.|teacher\.)?bbox_head\.fc_cls\.\d+\.weight', k)]
    if not keys:
        raise ConversionError('no bbox_head.fc_cls.*: not an official Semi-DETR / DINODETR checkpoint? '
                              'Give --config explicitly')
    num_classes = int(state[keys[0]].shape[0])
    name = {80: 'coco_10pct.py', 20: 'voc.py'}.get(num_classes)
    if name is None:
        raise ConversionError(f'{num_classes} classes: no shipped config; give --config')
    return osp.join(REPO_ROOT, 'configs', 'semi_detr', name)


def prepare_model_cfg(model_cfg):
    det = model_cfg.get('detector')
    for cfg in (det, model_cfg):
        if cfg is not None and cfg.get('backbone') is not None:
            cfg.backbone.init_cfg = None
    return model_cfg


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='official Semi-DETR / DINODETR checkpoint -> queryvision_mm')
    add_common_args(parser, 'from the number of classes (configs/semi_detr/coco_10pct.py or voc.py)')
    parser.add_argument('--stage', default='one-to-one', choices=['one-to-one', 'one-to-many'],
                        help='matching stage stored in the wrapper (default one-to-one: after the switch iteration, '
                        'as the released checkpoints)')
    parser.add_argument('--take', default='student', choices=['student', 'teacher'],
                        help='detector taken from a Semi-DETR checkpoint when --config is a single DINO')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import_plugin()
    try:
        state, src_meta = load_source(args.src)
        config = args.config or default_config(state)
        target = build_target_state_dict(config, prepare_model_cfg, args.cfg_options)
        semi_target = any(k.startswith('student.') for k in target)
        converted, sources, unmapped, notes = convert(state, semi_target, args.take, args.stage)
        if not any(matches(k, args.allow_unmapped) for k in converted if NECK_BIAS.fullmatch(k)):
            check_neck_bias(converted, target)
        out, report = finalize(converted, sources, unmapped, target, args.allow_missing, args.allow_unmapped)
    except ConversionError as err:
        print(f'error: {args.src}: {err}', file=sys.stderr)
        return 1
    return write_converted(args, config, out, report, notes, src_meta, OFFICIAL_REPO,
                           'tools/model_converters/semi_detr_to_qv.py')


if __name__ == '__main__':
    sys.exit(main())
