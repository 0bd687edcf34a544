"""Official-checkpoint converters (tools/model_converters/cq_dino_to_qv.py, semi_detr_to_qv.py) and the refusal of
unconverted official files in our checkpoint loader.

The "official" state dicts are built from small re-implementations of the authors' modules, with their attribute
names and shapes (and, where a forward is compared, their computation), read in:

* RedAIGC/CQ-DINO @6c8e60f: ``mmdet/models/language_models/learnable_category_query_tree.py`` (class
  ``LearnableCategoryQueryTree``: ``label_embed``, ``wordvec_proj``, ``label_norm``, ``fc``, ``image_proj``,
  ``tagging_head``; ``forward`` / ``generate``), ``learnable_category_query_coco_selfatten_swinl.py``
  (``LabelSelfAttention``: ``self_attn`` = ``nn.MultiheadAttention(768, 8)`` on a (1, C, D) table, ``norm``),
  ``mmdet/models/language_models/tagbertmodel.py`` @f5300b34 (``BertSelfAttention`` query / key / value with
  ``encoder_width`` inputs, ``BertSelfOutput`` / ``BertOutput`` dense + LayerNorm, ``BertIntermediate``, ``BertLayer``
  ``mode='tagging'``: cross-attention + FFN), ``q2l_config.json`` (layer_norm_eps 1e-12),
  ``mmdet/models/layers/transformer/utils.py`` (``TryPatchMerging.forward``: x0..x3 = [0::2, 0::2], [1::2, 0::2],
  [0::2, 1::2], [1::2, 1::2], cat, norm, reduction), ``mmdet/models/backbones/cqswin.py`` (= mmdet 3.3's Swin but
  for ``TryPatchMerging``), ``mmdet/models/layers/transformer/cqdino_layers.py`` (``CQDinoTransformerEncoder``:
  ``layers`` + ``fusion_layers``) and ``mmdet/models/detectors/cqdino.py`` (``CQDINO._init_layers``: the mmdet 3.3
  Grounding-DINO names).
* JCZ404/Semi-DETR @6afea66: ``detr_ssod/models/dino_detr_ssod.py`` (``DinoDetrSSOD``: ``teacher``, ``student``,
  ``Projector`` conv1/bn1/conv2/bn2/fc1/bn/fc2), ``detr_od/models/dense_heads/dino_detr_ssod_head.py``
  (``_init_layers``:
  ``input_proj``, shared ``fc_cls`` / ``fc_reg``, ``fc_enc_cls`` / ``fc_enc_reg``, ``label_enc`` with
  dn_labelbook_size + 1 = 82 rows), ``detr_od/models/utils/transformer.py`` (``DINOTransformer``: ``level_embed``,
  ``tgt_embed``, ``enc_output(_norm)``; encoder layer ``self_attn``/``norm1``/``linear1``/``linear2``/``norm2``;
  decoder layer ``cross_attn``/``norm1``/``self_attn``/``norm2``/``linear1``/``linear2``/``norm3`` and its
  ``forward_sa`` / ``forward_ca`` / ``forward_ffn``; decoder ``ref_point_head`` MLP, ``norm``) and
  ``detr_od/models/utils/ops/modules/ms_deform_attn.py`` (``MSDeformAttn`` parameters and ``forward``; its core equals
  ``ms_deform_attn_core_pytorch`` of ``ops/functions/ms_deform_attn_func.py``, which mmcv's
  ``multi_scale_deformable_attn_pytorch`` reproduces).
"""
import copy
import math
import os.path as osp
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import REPO, load_module_from_path, shrink_semi_detr_cfg

CONV_DIR = osp.join(REPO, 'tools', 'model_converters')
cqc = load_module_from_path('qv_cq_dino_to_qv', osp.join(CONV_DIR, 'cq_dino_to_qv.py'))
sdc = load_module_from_path('qv_semi_detr_to_qv', osp.join(CONV_DIR, 'semi_detr_to_qv.py'))
common = sys.modules['_official_common']  # the helper module the converters import (same ConversionError)


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


def _build(cfg_model):
    from mmengine.registry import DefaultScope

    from mmdet.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmdet'):  # also in module-scoped fixtures (before conftest's)
        return MODELS.build(copy.deepcopy(cfg_model))


# ---------------------------------------------------------------------------------------------------------------
# official CQ-DINO selector (re-implemented from the official definitions, see the module docstring)
# ---------------------------------------------------------------------------------------------------------------
class _OfficialBertSelfAttention(nn.Module):

    def __init__(self, hidden, encoder_width, heads):
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(encoder_width, hidden)
        self.value = nn.Linear(encoder_width, hidden)
        self.heads = heads

    def forward(self, x, enc):
        b, n, d = x.shape
        dh = d // self.heads

        def split(t):
            return t.view(t.size(0), t.size(1), self.heads, dh).permute(0, 2, 1, 3)

        q, k, v = split(self.query(x)), split(self.key(enc)), split(self.value(enc))
        probs = (q @ k.transpose(-1, -2) / math.sqrt(dh)).softmax(-1)  # image mask all ones: + 0
        return (probs @ v).permute(0, 2, 1, 3).reshape(b, n, d)


class _OfficialDenseLN(nn.Module):  # BertSelfOutput / BertOutput: LayerNorm(dense(h) + input), eps 1e-12

    def __init__(self, d_in, d_out):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=1e-12)

    def forward(self, h, inp):
        return self.LayerNorm(self.dense(h) + inp)


class _OfficialBertAttention(nn.Module):

    def __init__(self, hidden, encoder_width, heads):
        super().__init__()
        self.self = _OfficialBertSelfAttention(hidden, encoder_width, heads)
        self.output = _OfficialDenseLN(hidden, hidden)

    def forward(self, x, enc):
        return self.output(self.self(x, enc), x)


class _OfficialBertIntermediate(nn.Module):

    def __init__(self, hidden, inter):
        super().__init__()
        self.dense = nn.Linear(hidden, inter)

    def forward(self, x):
        return F.gelu(self.dense(x))


class _OfficialTaggingLayer(nn.Module):  # BertLayer after del_selfattention(), mode='tagging'

    def __init__(self, hidden, encoder_width, heads, inter):
        super().__init__()
        self.crossattention = _OfficialBertAttention(hidden, encoder_width, heads)
        self.intermediate = _OfficialBertIntermediate(hidden, inter)
        self.output = _OfficialDenseLN(inter, hidden)

    def forward(self, x, enc):
        a = self.crossattention(x, enc)
        return self.output(self.intermediate(a), a)


class _OfficialLabelSelfAttention(nn.Module):  # COCO: nn.MultiheadAttention (seq-first) on a (1, C, D) table

    def __init__(self, dim, heads=8):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = x.unsqueeze(1).permute(1, 0, 2)
        return self.norm(x + self.self_attn(x, x, x)[0]).squeeze(0)


class _OfficialSelector(nn.Module):
    """``LearnableCategoryQueryTree`` (tree: no parameters, left out) / ``...SelfAttentionCOCOSwinL``."""

    def __init__(self, num_classes, img_ch, dim=64, kv=32, heads=4, inter=128, layers=2, coco=False):
        super().__init__()
        self.tagging_head = nn.Module()
        self.tagging_head.encoder = nn.Module()
        self.tagging_head.encoder.layer = nn.ModuleList(
            _OfficialTaggingLayer(dim, kv, heads, inter) for _ in range(layers))
        self.label_embed = nn.Parameter(torch.randn(num_classes, dim))
        if coco:
            self.label_attn = _OfficialLabelSelfAttention(dim, 8)
        else:
            self.label_norm = nn.LayerNorm(dim)
        self.wordvec_proj = nn.Linear(dim, dim)
        self.fc = nn.Linear(dim, 1)
        self.image_proj = nn.Linear(img_ch, kv)
        self.coco = coco

    def forward(self, c5):
        label = F.relu(self.wordvec_proj(self.label_embed))
        if self.coco:
            label = self.label_attn(label)
        b, c, h, w = c5.shape
        img = c5.view(b, c, -1)
        img = torch.cat([img.mean(2, keepdim=True), img], dim=2).transpose(1, 2)
        img = self.image_proj(img)
        x = label.unsqueeze(0).repeat(b, 1, 1)
        if not self.coco:
            x = self.label_norm(x)
        for layer in self.tagging_head.encoder.layer:
            x = layer(x, img)
        return self.fc(x).squeeze(-1)


def _prefixed(state, prefix):
    return {prefix + k: v for k, v in state.items()}


def _strip(state, prefix):
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.mark.parametrize('coco', [False, True])
def test_cq_dino_selector_official_outputs_equal_after_conversion(coco):
    torch.manual_seed(0)
    official = _randomise(_OfficialSelector(num_classes=12, img_ch=48, coco=coco), seed=1).eval()
    relation = dict(type='QVCategorySelfAttention', embed_dims=64, num_heads=8, degenerate_compat=True) if coco \
        else None
    ours = _build(dict(type='QVCategoryQuerySelector', num_classes=12, img_in_channels=48, embed_dims=64,
                       kv_dims=32, num_layers=2, num_heads=4, ffn_dims=128, topk=5, relation=relation,
                       chunk_size=None)).eval()
    converted, sources, unmapped, notes = cqc.convert(_prefixed(official.state_dict(), 'language_model.'))
    assert unmapped == []
    ours.load_state_dict(_strip(converted, 'language_model.'), strict=True)
    # q, k, v biases of each layer concatenated in this order into in_proj_bias
    sd = official.state_dict()
    assert torch.equal(converted['language_model.layers.1.cross_attn.in_proj_bias'], torch.cat([
        sd[f'tagging_head.encoder.layer.1.crossattention.self.{n}.bias'] for n in ('query', 'key', 'value')]))
    c5 = torch.randn(2, 48, 3, 4)
    with torch.no_grad():
        ref, got = official(c5), ours(c5, return_tokens=False)['logits']
    # LayerNorm eps differs (official 1e-12, ours 1e-5): agreement to ~1e-5
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Swin patch merging: official TryPatchMerging order -> mmdet PatchMerging (nn.Unfold order)
# ---------------------------------------------------------------------------------------------------------------
def _official_try_patch_merging(x, hw, norm_w, norm_b, red_w):
    """TryPatchMerging.forward (CQ-DINO ``mmdet/models/layers/transformer/utils.py``): corner padding to even H, W
    (its AdaptivePadding), then cat(x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]) -> LN -> Linear."""
    b, n, c = x.shape
    h, w = hw
    x = x.view(b, h, w, c)
    x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
    x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1).view(b, -1, 4 * c)
    x = F.layer_norm(x, (4 * c, ), norm_w, norm_b)
    return F.linear(x, red_w)


@pytest.mark.parametrize('hw', [(6, 8), (5, 7)])
def test_patch_merging_reorder_gives_equal_outputs(hw):
    from mmdet.models.layers import PatchMerging
    c = 6
    g = torch.Generator().manual_seed(0)
    official = {'reduction.weight': torch.randn(2 * c, 4 * c, generator=g),
                'norm.weight': torch.rand(4 * c, generator=g) + 0.5, 'norm.bias': torch.randn(4 * c, generator=g)}
    merge = PatchMerging(in_channels=c, out_channels=2 * c, stride=2, norm_cfg=dict(type='LN')).eval()
    x = torch.randn(2, hw[0] * hw[1], c, generator=g)
    ref = _official_try_patch_merging(x, hw, official['norm.weight'], official['norm.bias'],
                                      official['reduction.weight'])
    # as they are (same names and shapes: a plain load "works") the outputs differ ...
    merge.load_state_dict(official, strict=True)
    assert not torch.allclose(merge(x, hw)[0], ref, atol=1e-3)
    # ... after the converter's reorder they are equal
    converted = {k: cqc.swin_to_unfold_order(f'backbone.stages.0.downsample.{k}', v) for k, v in official.items()}
    merge.load_state_dict(converted, strict=True)
    out, out_hw = merge(x, hw)
    assert out_hw == ((hw[0] + 1) // 2, (hw[1] + 1) // 2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# whole CQ-DINO model: small model from the shipped configs, official state dict, converter CLI, strict loading
# ---------------------------------------------------------------------------------------------------------------
def _small_cq_dino_cfg(coco: bool):
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'cq_dino', 'coco_swinl.py' if coco else 'v3det_swinl.py'))
    m = cfg.model
    m.backbone.update(embed_dims=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], window_size=4,
                      pretrain_img_size=64, with_cp=False, init_cfg=None)
    m.neck.in_channels = [32, 64, 128, 256]
    m.encoder.num_layers, m.encoder.num_cp, m.decoder.num_layers, m.num_queries = 1, 0, 2, 20
    m.language_model.update(img_in_channels=256, embed_dims=64, kv_dims=32, ffn_dims=128, embed_file=None,
                            class_names=None)
    if coco:
        m.language_model.relation.update(embed_dims=64, degenerate_compat=True)
    else:  # the tree aggregator has no parameters (it needs the V3Det tree file)
        m.language_model.update(num_classes=120, relation=None)
        m.hierarchy = None
    return cfg


def _official_cq_dino_state(model, coco, seed=3):
    """Official key layout for ``model``'s architecture: the official fork builds backbone (CQSwinTransformer =
    mmdet Swin + TryPatchMerging, same parameters), neck, encoder (layers + fusion_layers), decoder, head, queries
    and DN embedding from the same mmdet 3.3 classes, so those keys are taken from ``model``; the selector is the
    official one (re-implemented above). Random values throughout."""
    _randomise(model, seed)
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith('language_model.')}
    lm = model.language_model
    official = _randomise(_OfficialSelector(lm.num_classes, 256, coco=coco), seed + 1)
    state.update(_prefixed(official.state_dict(), 'language_model.'))
    return state


@pytest.fixture(scope='module', params=[False, True], ids=['v3det', 'coco'])
def cq_dino_case(request, tmp_path_factory):
    coco = request.param
    cfg = _small_cq_dino_cfg(coco)
    tmp = tmp_path_factory.mktemp('cq_dino_' + ('coco' if coco else 'v3det'))
    cfg_file = str(tmp / 'small_cq_dino.json')  # JSON: dumped in ms (a .py dump is formatted by yapf)
    cfg.dump(cfg_file)
    model = _build(cfg.model)
    state = _official_cq_dino_state(model, coco)
    src = str(tmp / 'official.pth')
    torch.save({'state_dict': state, 'meta': dict(dataset_meta=dict(classes=['a', 'b']))}, src)
    return dict(coco=coco, cfg=cfg, cfg_file=cfg_file, src=src, state=state, tmp=tmp)


def test_cq_dino_cli_converts_and_loads_strictly(cq_dino_case, capsys):
    from mmengine.runner import load_checkpoint
    case = cq_dino_case
    out = str(case['tmp'] / 'converted.pth')
    assert cqc.main([case['src'], out, '--config', case['cfg_file']]) == 0
    model = _build(case['cfg'].model)
    load_checkpoint(model, out, map_location='cpu', strict=True)  # through our safe local loader
    sd, src = model.state_dict(), case['state']
    assert torch.equal(sd['language_model.category_embed'], src['language_model.label_embed'])
    assert torch.equal(sd['language_model.scorer.weight'], src['language_model.fc.weight'])
    assert torch.equal(sd['language_model.layers.0.ffn.3.weight'],
                       src['language_model.tagging_head.encoder.layer.0.output.dense.weight'])
    assert torch.equal(sd['encoder.fusion_layers.0.gamma_v'], src['encoder.fusion_layers.0.gamma_v'])
    for i in range(3):  # every downsample reordered (not copied), as mmdet's swin_converter does
        key = f'backbone.stages.{i}.downsample.reduction.weight'
        assert not torch.equal(sd[key], src[key])
        assert torch.equal(sd[key], cqc.swin_to_unfold_order(key, src[key]))
    if case['coco']:
        assert torch.equal(sd['language_model.relation.attn.in_proj_weight'],
                           src['language_model.label_attn.self_attn.in_proj_weight'])
    ckpt = torch.load(out, map_location='cpu', weights_only=True)
    assert ckpt['meta']['dataset_meta'] == dict(classes=['a', 'b'])
    assert ckpt['meta']['filled_keys'] == [] and ckpt['meta']['dropped'] == []
    assert 'reordered' in capsys.readouterr().out


def test_cq_dino_cli_reports_unmapped_missing_and_allow_missing(cq_dino_case, capsys):
    case = cq_dino_case
    state = dict(case['state'])
    state['language_model.tagging_head.pooler.dense.weight'] = torch.zeros(2, 2)  # not in the official model
    del state['query_embedding.weight']
    bad = str(case['tmp'] / 'bad.pth')
    torch.save({'state_dict': state}, bad)
    out = str(case['tmp'] / 'bad_qv.pth')
    assert cqc.main([bad, out, '--config', case['cfg_file']]) == 1
    err = capsys.readouterr().err
    assert 'language_model.tagging_head.pooler.dense.weight' in err and 'query_embedding.weight' in err
    assert not osp.exists(out)
    # documented way out: drop / initialise on purpose; the result is complete and says what was filled
    assert cqc.main([bad, out, '--config', case['cfg_file'], '--allow-unmapped', '*.pooler.*',
                     '--allow-missing', 'query_embedding.*']) == 0
    model = _build(case['cfg'].model)
    ckpt = torch.load(out, map_location='cpu', weights_only=True)
    model.load_state_dict(ckpt['state_dict'], strict=True)
    assert ckpt['meta']['filled_keys'] == ['query_embedding.weight']


def test_cq_dino_shape_mismatch_is_an_error(cq_dino_case):
    state = dict(cq_dino_case['state'])
    state['language_model.label_embed'] = torch.zeros(7, 64)  # another class count than the config
    converted, sources, unmapped, _ = cqc.convert(state)
    target = _build(cq_dino_case['cfg'].model).state_dict()
    with pytest.raises(common.ConversionError, match=r'language_model\.category_embed: converted \(7, 64\)'):
        common.finalize(converted, sources, unmapped, target)


def test_cq_dino_default_config_from_checkpoint():
    assert cqc.default_config({'language_model.image_proj.weight': torch.zeros(512, 1024)}).endswith(
        'configs/cq_dino/v3det_swinb.py')
    assert cqc.default_config({'language_model.image_proj.weight': torch.zeros(512, 1536)}).endswith(
        'configs/cq_dino/v3det_swinl.py')
    assert cqc.default_config({'language_model.image_proj.weight': torch.zeros(512, 1536),
                               'language_model.label_attn.norm.weight': torch.zeros(768)}).endswith(
                                   'configs/cq_dino/coco_swinl.py')
    for name in ('v3det_swinb.py', 'v3det_swinl.py', 'coco_swinl.py'):
        assert osp.isfile(osp.join(REPO, 'configs', 'cq_dino', name))


# ---------------------------------------------------------------------------------------------------------------
# official Semi-DETR (IDEA-DINO modules in an mmdet 2.16 head), re-implemented names / shapes / forward
# ---------------------------------------------------------------------------------------------------------------
class _OfficialMSDeformAttn(nn.Module):

    def __init__(self, d=256, levels=4, heads=8, points=4):
        super().__init__()
        self.d, self.levels, self.heads, self.points = d, levels, heads, points
        self.sampling_offsets = nn.Linear(d, heads * levels * points * 2)
        self.attention_weights = nn.Linear(d, heads * levels * points)
        self.value_proj = nn.Linear(d, d)
        self.output_proj = nn.Linear(d, d)

    def forward(self, query, reference_points, value_in, spatial_shapes):
        from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch
        n, lq, _ = query.shape
        value = self.value_proj(value_in).view(n, value_in.size(1), self.heads, self.d // self.heads)
        off = self.sampling_offsets(query).view(n, lq, self.heads, self.levels, self.points, 2)
        aw = self.attention_weights(query).view(n, lq, self.heads, self.levels * self.points).softmax(-1)
        aw = aw.view(n, lq, self.heads, self.levels, self.points)
        if reference_points.shape[-1] == 2:
            norm = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
            loc = reference_points[:, :, None, :, None, :] + off / norm[None, None, None, :, None, :]
        else:
            loc = (reference_points[:, :, None, :, None, :2]
                   + off / self.points * reference_points[:, :, None, :, None, 2:] * 0.5)
        return self.output_proj(multi_scale_deformable_attn_pytorch(value, spatial_shapes, loc, aw))


class _OfficialEncoderLayer(nn.Module):

    def __init__(self, d=256, ffn=64, levels=4):
        super().__init__()
        self.self_attn = _OfficialMSDeformAttn(d, levels)
        self.norm1 = nn.LayerNorm(d)
        self.linear1 = nn.Linear(d, ffn)
        self.linear2 = nn.Linear(ffn, d)
        self.norm2 = nn.LayerNorm(d)

    def forward(self, src, pos, ref, shapes):
        src = self.norm1(src + self.self_attn(src + pos, ref, src, shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class _OfficialDecoderLayer(nn.Module):

    def __init__(self, d=256, ffn=64, levels=4):
        super().__init__()
        self.cross_attn = _OfficialMSDeformAttn(d, levels)
        self.norm1 = nn.LayerNorm(d)
        self.self_attn = nn.MultiheadAttention(d, 8)
        self.norm2 = nn.LayerNorm(d)
        self.linear1 = nn.Linear(d, ffn)
        self.linear2 = nn.Linear(ffn, d)
        self.norm3 = nn.LayerNorm(d)

    def forward(self, tgt, pos, ref, memory, shapes):
        """module_seq ['sa', 'ca', 'ffn'] (batch-first here; the official layer is sequence-first)."""
        q = (tgt + pos).transpose(0, 1)
        tgt = self.norm2(tgt + self.self_attn(q, q, tgt.transpose(0, 1))[0].transpose(0, 1))
        tgt = self.norm1(tgt + self.cross_attn(tgt + pos, ref, memory, shapes))
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class _OfficialMLP(nn.Module):

    def __init__(self, i, h, o, n):
        super().__init__()
        dims = [h] * (n - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip([i] + dims, dims + [o]))


class _OfficialDINOHead(nn.Module):

    def __init__(self, backbone_channels, num_classes=80, enc_layers=1, dec_layers=2, num_queries=30, d=256,
                 ffn=2048, levels=4, labelbook=81):
        super().__init__()
        proj = [nn.Sequential(nn.Conv2d(c, d, 1), nn.GroupNorm(32, d)) for c in backbone_channels]
        proj += [nn.Sequential(nn.Conv2d(backbone_channels[-1], d, 3, 2, 1), nn.GroupNorm(32, d))
                 for _ in range(levels - len(backbone_channels))]
        self.input_proj = nn.ModuleList(proj)
        cls, reg = nn.Linear(d, num_classes), _OfficialMLP(d, d, 4, 3)
        self.fc_reg = nn.ModuleList([reg] * dec_layers)  # dec_pred_*_embed_share=True: one module, L names
        self.fc_cls = nn.ModuleList([cls] * dec_layers)
        self.fc_enc_reg = copy.deepcopy(reg)
        self.fc_enc_cls = copy.deepcopy(cls)
        self.label_enc = nn.Embedding(labelbook + 1, d)
        t = self.transformer = nn.Module()
        t.encoder = nn.Module()
        t.encoder.layers = nn.ModuleList(_OfficialEncoderLayer(d, ffn, levels) for _ in range(enc_layers))
        t.decoder = nn.Module()
        t.decoder.layers = nn.ModuleList(_OfficialDecoderLayer(d, ffn, levels) for _ in range(dec_layers))
        t.decoder.ref_point_head = _OfficialMLP(2 * d, d, d, 2)
        t.decoder.norm = nn.LayerNorm(d)
        t.level_embed = nn.Parameter(torch.zeros(levels, d))
        t.tgt_embed = nn.Embedding(num_queries, d)
        t.enc_output = nn.Linear(d, d)
        t.enc_output_norm = nn.LayerNorm(d)


class _OfficialDINODETR(nn.Module):

    def __init__(self, **kw):
        super().__init__()
        from mmdet.models.backbones import ResNet  # mmdet 2.x ResNet has the same parameter names
        self.backbone = ResNet(depth=18, out_indices=(1, 2, 3))
        self.bbox_head = _OfficialDINOHead([128, 256, 512], **kw)


class _OfficialProjector(nn.Module):

    def __init__(self, hidden=64):
        super().__init__()
        self.conv1 = nn.Conv2d(256, 256, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(256)
        self.conv2 = nn.Conv2d(256, 256, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(256)
        self.fc1 = nn.Linear(12544, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, 256)


@pytest.fixture(scope='module')
def semi_cfgs(tmp_path_factory):
    from mmengine.config import Config
    tmp = tmp_path_factory.mktemp('semi_detr_cfgs')
    out = {}
    for name, path in (('semi', 'configs/semi_detr/coco_10pct.py'), ('sparse', 'configs/sparse_semi_detr/'
                                                                              'coco_10pct.py')):
        cfg = shrink_semi_detr_cfg(Config.fromfile(osp.join(REPO, path)))
        cfg.model.detector.encoder.layer_cfg.ffn_cfg.feedforward_channels = 64
        cfg.model.detector.decoder.layer_cfg.ffn_cfg.feedforward_channels = 64
        assert cfg.model.detector.neck.bias is True  # as the official input projections (conv biases)
        cfg_file = str(tmp / f'small_{name}.json')
        cfg.dump(cfg_file)
        out[name] = (cfg, cfg_file, _build(cfg.model).state_dict())
    return out


@pytest.fixture(scope='module')
def official_semi_state():
    torch.manual_seed(0)
    m = nn.Module()
    m.teacher = _randomise(_OfficialDINODETR(ffn=64), 11)
    m.student = _randomise(_OfficialDINODETR(ffn=64), 12)
    m.projector = _randomise(_OfficialProjector(), 13)
    return m.state_dict()


def test_semi_detr_full_mapping_loads_strictly(semi_cfgs, official_semi_state):
    cfg, _, target = semi_cfgs['semi']
    src = official_semi_state
    converted, sources, unmapped, notes = sdc.convert(src, semi_target=True)
    out, report = common.finalize(converted, sources, unmapped, target)
    assert report == dict(dropped=[], filled_keys=[])
    model = _build(cfg.model)
    model.load_state_dict(out, strict=True)
    sd = model.state_dict()
    for who in ('student', 'teacher'):
        p = who + '.'
        # shared official fc_cls -> every decoder-layer branch; encoder-output branch last
        for i in range(2):
            assert torch.equal(sd[p + f'bbox_head.cls_branches.{i}.weight'], src[p + 'bbox_head.fc_cls.0.weight'])
            assert torch.equal(sd[p + f'bbox_head.reg_branches.{i}.4.bias'],
                               src[p + 'bbox_head.fc_reg.0.layers.2.bias'])
        assert torch.equal(sd[p + 'bbox_head.cls_branches.2.weight'], src[p + 'bbox_head.fc_enc_cls.weight'])
        assert torch.equal(sd[p + 'neck.extra_convs.0.gn.weight'], src[p + 'bbox_head.input_proj.3.1.weight'])
        assert torch.equal(sd[p + 'neck.convs.2.conv.weight'], src[p + 'bbox_head.input_proj.2.0.weight'])
        assert torch.equal(sd[p + 'query_embedding.weight'], src[p + 'bbox_head.transformer.tgt_embed.weight'])
        assert torch.equal(sd[p + 'dn_query_generator.label_embedding.weight'],
                           src[p + 'bbox_head.label_enc.weight'][:80])
        assert torch.equal(sd[p + 'decoder.layers.1.norms.0.weight'],
                           src[p + 'bbox_head.transformer.decoder.layers.1.norm2.weight'])
    assert not torch.equal(sd['student.query_embedding.weight'], sd['teacher.query_embedding.weight'])
    assert torch.equal(sd['projector.mlp.0.weight'], src['projector.fc1.weight'])
    assert torch.equal(sd['projector.convs.4.running_var'], src['projector.bn2.running_var'])
    assert sd['one_to_many_stage'].item() is False and model.one_to_many is False
    assert any('rows 80..81 dropped' in n for n in notes)


def _dec_inputs(levels=4, d=256, nq=7, b=2):
    g = torch.Generator().manual_seed(5)
    shapes = torch.tensor([[6, 5], [3, 3], [2, 2], [1, 1]])[:levels]
    starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    n = int((shapes[:, 0] * shapes[:, 1]).sum())
    return dict(query=torch.randn(b, nq, d, generator=g), pos=torch.randn(b, nq, d, generator=g),
                memory=torch.randn(b, n, d, generator=g), shapes=shapes, starts=starts,
                ref4=torch.rand(b, nq, levels, 4, generator=g) * 0.5 + 0.25,
                ref2=torch.rand(b, n, levels, 2, generator=g))


def test_semi_detr_decoder_and_encoder_layers_compute_the_same_after_conversion():
    """The norm renaming (official decoder norm2 / norm1 / norm3 follow self-attn / cross-attn / FFN) and the
    attention / FFN names, checked on outputs of one official layer vs mmdet's layer with the converted weights."""
    from mmdet.models.layers.transformer import (DeformableDetrTransformerDecoderLayer,
                                                 DeformableDetrTransformerEncoderLayer)
    x = _dec_inputs()
    off_dec = _randomise(_OfficialDecoderLayer(ffn=64), 21).eval()
    ours_dec = DeformableDetrTransformerDecoderLayer(
        self_attn_cfg=dict(embed_dims=256, num_heads=8, dropout=0.0), cross_attn_cfg=dict(embed_dims=256,
                                                                                          num_levels=4, dropout=0.0),
        ffn_cfg=dict(embed_dims=256, feedforward_channels=64, ffn_drop=0.0)).eval()
    src = _prefixed(off_dec.state_dict(), 'bbox_head.transformer.decoder.layers.0.')
    converted, _, unmapped, _ = sdc.convert_detector(src)
    assert unmapped == []
    ours_dec.load_state_dict(_strip(converted, 'decoder.layers.0.'), strict=True)
    with torch.no_grad():
        ref = off_dec(x['query'], x['pos'], x['ref4'], x['memory'], x['shapes'])
        got = ours_dec(x['query'], query_pos=x['pos'], value=x['memory'], spatial_shapes=x['shapes'],
                       level_start_index=x['starts'], reference_points=x['ref4'])
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)

    off_enc = _randomise(_OfficialEncoderLayer(ffn=64), 22).eval()
    ours_enc = DeformableDetrTransformerEncoderLayer(
        self_attn_cfg=dict(embed_dims=256, num_levels=4, dropout=0.0),
        ffn_cfg=dict(embed_dims=256, feedforward_channels=64, ffn_drop=0.0)).eval()
    converted, _, unmapped, _ = sdc.convert_detector(
        _prefixed(off_enc.state_dict(), 'bbox_head.transformer.encoder.layers.0.'))
    assert unmapped == []
    ours_enc.load_state_dict(_strip(converted, 'encoder.layers.0.'), strict=True)
    mem, pos = x['memory'], torch.randn_like(x['memory'])
    with torch.no_grad():
        ref = off_enc(mem, pos, x['ref2'], x['shapes'])
        got = ours_enc(mem, query_pos=pos, key_padding_mask=None, spatial_shapes=x['shapes'],
                       level_start_index=x['starts'], reference_points=x['ref2'])
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_semi_detr_supervised_dino_needs_allow_missing_projector(semi_cfgs, official_semi_state):
    _, _, target = semi_cfgs['semi']
    plain = _strip(official_semi_state, 'student.')  # the supervised DINODETR baseline: no prefixes
    converted, sources, unmapped, notes = sdc.convert(plain, semi_target=True)
    with pytest.raises(common.ConversionError, match=r'projector\.mlp\.0\.weight'):
        common.finalize(converted, sources, unmapped, target)
    out, report = common.finalize(converted, sources, unmapped, target, allow_missing=['projector.*'])
    assert all(k.startswith('projector.') for k in report['filled_keys']) and report['filled_keys']
    assert torch.equal(out['teacher.level_embed'], plain['bbox_head.transformer.level_embed'])
    assert torch.equal(out['student.level_embed'], plain['bbox_head.transformer.level_embed'])


def test_semi_detr_cli_into_sparse_semi_detr(semi_cfgs, official_semi_state, tmp_path, capsys):
    cfg, cfg_file, _ = semi_cfgs['sparse']
    src = str(tmp_path / 'semi_detr_official.pth')
    torch.save({'state_dict': official_semi_state, 'meta': dict(CLASSES=('a', 'b'))}, src)
    out = str(tmp_path / 'sparse_qv.pth')
    # a neck without conv biases (mmdet DINO's ChannelMapper) cannot hold the official input projections: refused,
    # with the override to use (the shipped configs set neck.bias=True)
    assert sdc.main([src, out, '--config', cfg_file, '--cfg-options', 'model.detector.neck.bias=auto']) == 1
    assert 'model.detector.neck.bias=True' in capsys.readouterr().err
    assert sdc.main([src, out, '--config', cfg_file]) == 1
    err = capsys.readouterr().err
    assert 'projector.' in err and 'qrm.' in err  # Semi-DETR's projector unmapped, Sparse's QRM missing
    assert not osp.exists(out)
    assert sdc.main([src, out, '--config', cfg_file, '--allow-unmapped', 'projector.*', '--allow-missing',
                     'qrm.*', '--stage', 'one-to-many']) == 0
    assert 'tools/test.py' in capsys.readouterr().out  # the command to evaluate it
    model = _build(cfg.model)
    from mmengine.runner import load_checkpoint
    ckpt = load_checkpoint(model, out, map_location='cpu', strict=True)
    assert model.one_to_many is True
    assert ckpt['meta']['dataset_meta'] == dict(classes=['a', 'b'])
    assert ckpt['meta']['filled_keys'] and all(k.startswith('qrm.') for k in ckpt['meta']['filled_keys'])


def test_semi_detr_default_config():
    assert sdc.default_config({'teacher.bbox_head.fc_cls.0.weight': torch.zeros(80, 256)}).endswith(
        'configs/semi_detr/coco_10pct.py')
    assert sdc.default_config({'bbox_head.fc_cls.0.weight': torch.zeros(20, 256)}).endswith(
        'configs/semi_detr/voc.py')


# ---------------------------------------------------------------------------------------------------------------
# load_from of an unconverted official file: refused with the converter's command
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('key, converter', [
    ('language_model.tagging_head.encoder.layer.0.crossattention.self.query.weight', 'cq_dino_to_qv.py'),
    ('teacher.bbox_head.transformer.tgt_embed.weight', 'semi_detr_to_qv.py'),
    ('bbox_head.label_enc.weight', 'semi_detr_to_qv.py'),
])
def test_load_from_official_file_names_the_converter(tmp_path, key, converter):
    from mmengine.runner import Runner, load_checkpoint

    from queryvision_mm.utils.checkpoint import OfficialCheckpointError
    path = str(tmp_path / 'official.pth')
    torch.save({'state_dict': {key: torch.zeros(2, 2), 'backbone.conv1.weight': torch.zeros(1)}}, path)
    model = nn.Linear(2, 2)
    with pytest.raises(OfficialCheckpointError, match=rf'python tools/model_converters/{converter} .*official\.pth'):
        load_checkpoint(model, path, map_location='cpu')
    # the runner's load_from path (Runner.load_or_resume -> Runner.load_checkpoint)
    runner = Runner(model=model, work_dir=str(tmp_path / 'work'), load_from=path, default_scope='mmdet')
    with pytest.raises(OfficialCheckpointError, match=converter):
        runner.load_or_resume()


def test_converted_and_ordinary_files_still_load(tmp_path):
    from mmengine.runner import load_checkpoint
    model = nn.Linear(2, 2)
    path = str(tmp_path / 'ours.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    fresh = nn.Linear(2, 2)
    load_checkpoint(fresh, path, map_location='cpu', strict=True)   # our own file: no official-checkpoint guard
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
