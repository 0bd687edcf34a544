"""Stand-ins for the local weights the mmpretrain-scope configs (QKS, MaO) read, written where the config looks for
them, with the real architecture and in the real file format, so that the project's own loaders run on them:

* open_clip CLIP (``QVCLIPVisionTokens`` of QKS, ``QVOpenCLIPCropEncoder`` of MaO-CLIP): a built-in name with
  ``pretrained=<file>`` gets ``open_clip.create_model(name, pretrained=None).state_dict()`` saved with ``torch.save``
  (the key layout of ``open_clip_pytorch_model.bin``); the demos' ``local-dir:<folder>`` gets the demo's own random
  CLIP (:func:`queryvision_mm.testing.demo_data.demo_photos.make_random_clip`).
* OWLv2 (``QVOWLv2Objectness``): ``Owlv2ForObjectDetection(<config>).save_pretrained(folder)``, the config of
  ``google/owlv2-base-patch16-ensemble`` built locally (transformers' ``Owlv2Config`` defaults are 768² input; the
  release is 960²). A random objectness head scores every one of the 3,600 patches near 0.5 (all above MaO's 0.2
  threshold) and a random box head predicts patch-sized boxes; the stand-in's last objectness / box layers are
  therefore biased (values only, same keys) so that about :data:`OWLV2_PROPOSALS` patches pass the threshold, with
  boxes about a tenth of the image side, as a trained model gives on a scene.
* SAM (``QVSAMBoxMasks``): ``segment_anything.sam_model_registry[model_type]()`` (random) state dict for ``vit_h`` /
  ``vit_l`` / ``vit_b`` (vit_h: 2.5 GB), ``build_sam_from_arch(**arch)`` for ``model_type='custom'``.
* DINOv2 (``QVDINOv2CropEncoder``): ``Dinov2Model(<config>).save_pretrained(folder)`` with the release config of
  ``facebook/dinov2-{small,base,large}`` (518² position table, patch 14).
* QKS label embeddings (``embed_file``): :func:`~queryvision_mm.utils.text_embeddings.save_class_embeddings` with the
  dataset's class names (seen + unseen, from the annotation files the data writer produced), random unit vectors.

Large stand-ins are built once into a cache (``$QV_REHEARSAL_WEIGHTS`` or ``~/.cache/queryvision_mm/
rehearsal_weights/<architecture>``) and symlinked into the sandbox. Everything is offline. A component whose weights
are neither a known architecture nor already present is an error naming it."""
import hashlib
import json
import os
import os.path as osp
import shutil
from typing import Callable, Iterator, Optional, Tuple

import numpy as np
import torch

from .context import RehearsalContext, WeightRecord, weight_provider

STANDIN_VERSION = 1  # bump when a stand-in's construction changes (invalidates the cache)
OWLV2_PROPOSALS = 6

OWLV2_CONFIGS = {
    # google/owlv2-base-patch16(-ensemble): CLIP B/16 towers, 960² input, 512-d projection, 16 text positions
    'base-patch16': dict(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                         max_position_embeddings=16, vocab_size=49408),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=960, patch_size=16),
        projection_dim=512),
}
DINOV2_CONFIGS = {
    'small': dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6),
    'base': dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    'large': dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
}
DINOV2_COMMON = dict(mlp_ratio=4, image_size=518, patch_size=14, layer_norm_eps=1e-6, layerscale_value=1.0,
                     qkv_bias=True, use_swiglu_ffn=False, hidden_act='gelu')


def cache_root() -> str:
    return os.environ.get('QV_REHEARSAL_WEIGHTS') or osp.join(osp.expanduser('~'), '.cache', 'queryvision_mm',
                                                               'rehearsal_weights')


def cached(key: str, build: Callable[[str], None]) -> str:
    """The cache entry ``key`` (a file or a folder), built once by ``build(tmp_path)`` and renamed into place, so a
    concurrent or interrupted build never leaves a half-written entry."""
    dst = osp.join(cache_root(), f'v{STANDIN_VERSION}', key)
    if osp.exists(dst):
        return dst
    os.makedirs(osp.dirname(dst), exist_ok=True)
    tmp = f'{dst}.tmp{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    try:
        os.rename(tmp, dst)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True) if osp.isdir(tmp) else os.remove(tmp)
    return dst


def place(ctx: RehearsalContext, cfg_path: str, src: str, by: str) -> str:
    """The cache entry ``src`` at the config's path ``cfg_path`` inside the sandbox (once): a file as a symlink, a
    folder as a real folder of symlinks (so that replacing a file in the sandbox never touches the cache)."""
    dst = ctx.path(cfg_path).rstrip('/')
    if not ctx.claim(dst, by) or osp.lexists(dst):
        return dst
    if osp.isdir(src):
        for d, _, files in os.walk(src):
            out = osp.join(dst, osp.relpath(d, src))
            os.makedirs(out, exist_ok=True)
            for f in files:
                os.symlink(osp.abspath(osp.join(d, f)), osp.join(out, f))
    else:
        os.symlink(osp.abspath(src), dst)
    return dst


def _walk(node, path: str) -> Iterator[Tuple[str, dict]]:
    if isinstance(node, dict):
        if 'type' in node:
            yield path, node
        for k, v in node.items():
            yield from _walk(v, f'{path}.{k}')
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _walk(v, f'{path}[{i}]')


def model_parts(cfg, *types: str) -> Iterator[Tuple[str, dict]]:
    """(path, dict) of every config dict of one of ``types`` under ``model`` and ``describer`` (MaO stage A)."""
    for root in ('model', 'describer'):
        for path, node in _walk(cfg.get(root), root):
            if node['type'] in types:
                yield path, node


# --------------------------------------------------------------------------------------------------------- CLIP
def open_clip_model_cfg(model_name: str) -> dict:
    import open_clip
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise KeyError(f'rehearsal: open_clip knows no model {model_name!r}')
    return cfg


def open_clip_local_dir_cfg(model_name: str, ctx: RehearsalContext) -> dict:
    with open(osp.join(ctx.path(model_name[len('local-dir:'):]), 'open_clip_config.json')) as f:
        return json.load(f)['model_cfg']


def _build_open_clip(name: str) -> Callable[[str], None]:
    def build(tmp):
        import open_clip
        torch.manual_seed(0)
        model = open_clip.create_model(name, pretrained=None)
        torch.save(model.state_dict(), tmp)  # open_clip_pytorch_model.bin: a flat state dict
    return build


@weight_provider
def open_clip_weights(cfg, ctx: RehearsalContext) -> None:
    for path, node in model_parts(cfg, 'QVCLIPVisionTokens', 'QVOpenCLIPCropEncoder'):
        name, pretrained = node.get('model_name', 'ViT-B-16'), node.get('pretrained')
        if name.startswith('local-dir:'):
            folder = name[len('local-dir:'):]
            if osp.basename(osp.normpath(folder)) != 'clip_random':
                raise NotImplementedError(f'rehearsal: {path}.model_name={name!r}: unknown local open_clip folder')
            from queryvision_mm.testing.demo_data.demo_photos import make_random_clip
            if ctx.claim(ctx.path(osp.join(folder, 'open_clip_config.json')), path):
                make_random_clip(ctx.path(folder), seed=ctx.seed)
            ctx.weights.append(WeightRecord(path, 'pretrained', name, ctx.path(folder),
                                            'random, the demo CLIP (demo_photos.DEMO_CLIP), open_clip local-dir'))
            continue
        if not pretrained:
            continue  # allow_random_weights (tests): nothing to read
        src = cached(f'open_clip/{name}.bin', _build_open_clip(name))
        dst = place(ctx, pretrained, src, path)
        ctx.weights.append(WeightRecord(path, 'pretrained', pretrained, dst,
                                        f'random open_clip {name} (create_model, pretrained=None), its state-dict '
                                        f'keys'))


@weight_provider
def vit_native_input_size(cfg, ctx: RehearsalContext) -> None:
    """QKS: open_clip's ViT adds a fixed position table of (image_size / patch)² + 1 tokens, so its input side is
    the architecture (224 for ViT-B/16), not an image scale: the rehearsal keeps every resize / crop of the
    pipelines at that size (the written images are small and are resized up)."""
    from .plan import SCALE_KEYS, iter_datasets, iter_transforms, loaders
    backbone = (cfg.get('model') or {}).get('backbone') or {}
    if backbone.get('type') != 'QVCLIPVisionTokens':
        return
    name = backbone.get('model_name', 'ViT-B-16-quickgelu')
    mcfg = open_clip_local_dir_cfg(name, ctx) if name.startswith('local-dir:') else open_clip_model_cfg(name)
    size = mcfg['vision_cfg']['image_size']
    size = size[0] if isinstance(size, (list, tuple)) else size
    for loader in loaders(cfg):
        for ds in iter_datasets(loader['dataset']):
            for t in iter_transforms(ds.get('pipeline', [])):
                for k in SCALE_KEYS:
                    if k not in t:
                        continue
                    if t['type'] not in ('ResizeEdge', 'CenterCrop', 'RandomResizedCrop', 'Resize'):
                        raise NotImplementedError(f'rehearsal: {t["type"]}.{k} in a QKS pipeline')
                    t[k] = size if isinstance(t[k], (int, float)) else type(t[k])([size] * len(t[k]))
    ctx.extra['native_input_size'] = size


# ------------------------------------------------------------------------------------------------- label embeddings
def _zsl_datasets(cfg):
    from .plan import iter_datasets, loaders
    for key in ('test_dataloader', 'val_dataloader', 'train_dataloader'):
        loader = cfg.get(key)
        if loader:
            for ds in iter_datasets(loader['dataset']):
                if ds['type'] == 'QVZSLMultiLabelDataset':
                    yield key, ds


@weight_provider
def qks_label_embeddings(cfg, ctx: RehearsalContext) -> None:
    from queryvision_mm.utils.text_embeddings import save_class_embeddings

    from .data_cls import read_qks_metainfo
    heads = list(model_parts(cfg, 'QVQKSHead', 'QVCLIPZeroShotHead'))
    if not heads:
        return
    datasets = list(_zsl_datasets(cfg))
    if not datasets:
        raise ValueError('rehearsal: a QKS head without a QVZSLMultiLabelDataset to take its class names from')
    meta = read_qks_metainfo(ctx, datasets[0][1])  # test first: it holds seen and unseen labels
    for key, ds in datasets[1:]:
        other = read_qks_metainfo(ctx, ds)
        if other['classes'] != meta['classes'] or other['num_seen'] != meta['num_seen']:
            raise ValueError(f'rehearsal: {key} has other classes than {datasets[0][0]}')
    names = list(meta['classes'])
    for ev in ('val_evaluator', 'test_evaluator'):
        for e in (cfg.get(ev) or []) if isinstance(cfg.get(ev), list) else [cfg.get(ev) or {}]:
            if 'num_seen' in e and e['num_seen'] != meta['num_seen']:
                raise ValueError(f'rehearsal: {ev}.num_seen={e["num_seen"]} but the dataset has {meta["num_seen"]} '
                                 'seen labels')
    for path, head in heads:
        if head['num_seen'] != meta['num_seen']:
            raise ValueError(f'rehearsal: {path}.num_seen={head["num_seen"]} but the dataset has {meta["num_seen"]} '
                             'seen labels')
        if head['type'] == 'QVQKSHead':
            dims = int(head.get('out_dims', 512))
        else:  # zero-shot: CLIP's joint embedding space
            backbone = cfg.model.backbone
            name = backbone.get('model_name', 'ViT-B-16-quickgelu')
            dims = (open_clip_local_dir_cfg(name, ctx) if name.startswith('local-dir:')
                    else open_clip_model_cfg(name))['embed_dim']
        dst = ctx.path(head['embed_file'])
        if ctx.claim(dst, path):
            g = torch.Generator().manual_seed(ctx.seed)
            emb = torch.nn.functional.normalize(torch.randn(len(names), dims, generator=g), dim=-1)
            save_class_embeddings(dst, emb, names, meta=dict(model='random (rehearsal)', templates='none'))
        ctx.weights.append(WeightRecord(f'{path}.embed_file', 'side file', head['embed_file'], dst,
                                        f'random unit vectors, {len(names)} dataset labels '
                                        f'({meta["num_seen"]} seen), {dims}-d'))


# ------------------------------------------------------------------------------------------------------------ OWLv2
def _owlv2_arch(model_dir: str) -> Tuple[str, dict]:
    base = osp.basename(osp.normpath(model_dir))
    if base == 'owlv2_random':  # the MaO demo's stand-in
        from queryvision_mm.testing.demo_data.demo_photos import DEMO_OWLV2
        return 'demo', DEMO_OWLV2
    for key, arch in OWLV2_CONFIGS.items():
        if f'owlv2-{key}' in base:
            return key, arch
    raise NotImplementedError(f'rehearsal: no OWLv2 stand-in for {model_dir!r} (known: owlv2-{list(OWLV2_CONFIGS)}, '
                              'the demo owlv2_random)')


def calibrate_owlv2(model, proposals: int = OWLV2_PROPOSALS, thr: float = 0.2, seed: int = 0) -> None:
    """Bias a random OWLv2's objectness head so that about ``proposals`` patches of a scene exceed ``thr``, and its
    box head towards boxes of ~10 % of the image side (see the module docstring). Values only: keys unchanged."""
    from transformers import Owlv2ImageProcessor
    size = model.config.vision_config.image_size
    rng = np.random.default_rng(seed)
    img = (rng.integers(0, 255, (160, 200, 3), dtype=np.uint8) // 4 + 96)
    for _ in range(3):
        y, x = int(rng.integers(0, 120)), int(rng.integers(0, 150))
        img[y:y + 40, x:x + 50] = rng.integers(0, 255, 3)
    pixels = Owlv2ImageProcessor(size={'height': size, 'width': size})(images=img, return_tensors='pt')['pixel_values']
    with torch.no_grad():
        fm = model.image_embedder(pixel_values=pixels)[0]
        feats = fm.reshape(1, -1, fm.shape[-1])
        logits = model.objectness_predictor(feats)[0]
        # patches over the image (the processor pads bottom / right to a square)
        gh = fm.shape[1]
        rows, cols = int(np.ceil(gh * 160 / 200)), gh
        inside = logits.reshape(gh, gh)[:rows, :cols].flatten()
        kth = inside.topk(proposals).values[-1]
        model.objectness_head.dense2.bias += float(np.log(thr / (1 - thr))) - float(kth) + 1e-3
        model.box_head.dense2.bias[2:] += 2.0


def _build_owlv2(arch: dict, calibrate: bool) -> Callable[[str], None]:
    def build(tmp):
        import transformers
        torch.manual_seed(0)
        model = transformers.Owlv2ForObjectDetection(transformers.Owlv2Config(**arch)).eval()
        if calibrate:
            calibrate_owlv2(model)
        model.save_pretrained(tmp)
    return build


@weight_provider
def owlv2_weights(cfg, ctx: RehearsalContext) -> None:
    for path, node in model_parts(cfg, 'QVOWLv2Objectness'):
        key, arch = _owlv2_arch(node['model_dir'])
        if key == 'demo':
            src = cached('owlv2/demo', _build_owlv2(arch, calibrate=False))
            note = 'random, the demo OWLv2 (demo_photos.DEMO_OWLV2)'
        else:
            src = cached(f'owlv2/{key}-calibrated{OWLV2_PROPOSALS}', _build_owlv2(arch, calibrate=True))
            note = (f'random Owlv2ForObjectDetection, owlv2-{key} config (save_pretrained), objectness biased to '
                    f'~{OWLV2_PROPOSALS} proposals per scene')
        dst = place(ctx, node['model_dir'], src, path)
        ctx.weights.append(WeightRecord(path, 'pretrained', node['model_dir'], dst, note))


# -------------------------------------------------------------------------------------------------------------- SAM
def _build_sam(model_type: str, arch: Optional[dict]) -> Callable[[str], None]:
    def build(tmp):
        torch.manual_seed(0)
        if model_type == 'custom':
            from queryvision_mm.models.retrievers.mao_components import build_sam_from_arch
            sam = build_sam_from_arch(**(arch or {}))
        else:
            from segment_anything import sam_model_registry
            sam = sam_model_registry[model_type](checkpoint=None)
        torch.save(sam.state_dict(), tmp)
    return build


@weight_provider
def sam_weights(cfg, ctx: RehearsalContext) -> None:
    for path, node in model_parts(cfg, 'QVSAMBoxMasks'):
        model_type, arch = node.get('model_type', 'vit_h'), node.get('arch')
        if model_type == 'custom':
            digest = hashlib.sha1(json.dumps(dict(arch or {}), sort_keys=True).encode()).hexdigest()[:12]
            key, note = f'sam/custom-{digest}.pth', f'random segment-anything Sam at arch {dict(arch or {})}'
        else:
            from segment_anything import sam_model_registry
            if model_type not in sam_model_registry or model_type == 'default':
                raise NotImplementedError(f'rehearsal: {path}.model_type={model_type!r}')
            key, note = f'sam/{model_type}.pth', f'random sam_model_registry[{model_type!r}]() state dict'
        dst = place(ctx, node['checkpoint'], cached(key, _build_sam(model_type, arch)), path)
        ctx.weights.append(WeightRecord(path, 'pretrained', node['checkpoint'], dst, note))


# ----------------------------------------------------------------------------------------------------------- DINOv2
def _build_dinov2(arch: dict) -> Callable[[str], None]:
    def build(tmp):
        import transformers
        torch.manual_seed(0)
        transformers.Dinov2Model(transformers.Dinov2Config(**DINOV2_COMMON, **arch)).save_pretrained(tmp)
    return build


@weight_provider
def dinov2_weights(cfg, ctx: RehearsalContext) -> None:
    for path, node in model_parts(cfg, 'QVDINOv2CropEncoder'):
        base = osp.basename(osp.normpath(node['model_dir']))
        size = next((s for s in DINOV2_CONFIGS if base == f'dinov2-{s}'), None)
        if size is None:
            raise NotImplementedError(f'rehearsal: no DINOv2 stand-in for {node["model_dir"]!r} (known: '
                                      f'dinov2-{list(DINOV2_CONFIGS)})')
        dst = place(ctx, node['model_dir'], cached(f'dinov2/{size}', _build_dinov2(DINOV2_CONFIGS[size])), path)
        ctx.weights.append(WeightRecord(path, 'pretrained', node['model_dir'], dst,
                                        f'random Dinov2Model, facebook/dinov2-{size} config (save_pretrained)'))


@weight_provider
def lora_adapters(cfg, ctx: RehearsalContext) -> None:
    """A ``lora_adapter`` folder is a stage-A output: the rehearsal's stage-A training writes it (``.mao_steps``)."""
    for path, node in model_parts(cfg, 'QVDINOv2CropEncoder', 'QVOpenCLIPCropEncoder'):
        if node.get('lora_adapter'):
            ctx.weights.append(WeightRecord(f'{path}.lora_adapter', 'load_from', node['lora_adapter'],
                                            '<train work dir>/lora_adapter', 'the rehearsal\'s stage-A training'))


# ---------------------------------------------------------------------------------------------- EfficientNet-Lite
@weight_provider
def efficientnet_lite_crop_encoder_weights(cfg, ctx: RehearsalContext) -> None:
    """The Lite0 crop encoder (MaO demo) loads real ImageNet weights from an installed package: used as they are,
    recorded so that provenance perturbs a shifted copy (the row then reads ``pretrained`` for the encoder)."""
    from queryvision_mm.models.backbones.efficientnet_lite import PACKAGE_SCHEME

    from .weights_det import package_weight_file
    for path, node in model_parts(cfg, 'QVEfficientNetLiteCropEncoder'):
        if not node.get('pretrained', True):
            continue
        ckpt = node.get('checkpoint') or f'{PACKAGE_SCHEME}{node.get("variant", "lite0")}'
        if not ckpt.startswith(PACKAGE_SCHEME):
            continue   # a path or another scheme: the config's own file (existing-file rules of the other parts)
        ctx.weights.append(WeightRecord(path, 'pretrained', ckpt, package_weight_file(ckpt),
                                        'real weights from an installed package'))
