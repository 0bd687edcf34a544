"""How a shipped config is shrunk for its rehearsal. Only what the rehearsal contract allows changes: image scale
(every resize in every pipeline, scaled by one factor so that multi-scale choices keep their ratios), data size,
iteration / epoch counts with their schedule points (warm-up, milestones, the O2M->O2O switch, validation and
checkpoint intervals) and data-loader workers. The model, batch size, optimiser, hooks, evaluators and DDP settings
stay as shipped."""
import copy
import math
from typing import Iterator, List

from mmengine.config import Config

SCALE_KEYS = ('scale', 'scales', 'img_scale', 'crop_size')


def iter_transforms(pipeline) -> Iterator[dict]:
    """Every transform dict of a pipeline, including nested ones (MultiBranch branches, RandomChoice,
    RandomOrder, Compose, TestTimeAug)."""
    if isinstance(pipeline, dict):
        if 'type' in pipeline:
            yield pipeline
        for k, v in pipeline.items():
            if isinstance(v, (list, tuple, dict)) and k not in SCALE_KEYS:
                yield from iter_transforms(v)
    elif isinstance(pipeline, (list, tuple)):
        for v in pipeline:
            yield from iter_transforms(v)


def iter_datasets(ds) -> Iterator[dict]:
    """Leaf dataset configs under wrappers (ConcatDataset, RepeatDataset, ClassBalancedDataset, ...)."""
    if not isinstance(ds, dict):
        return
    children = ds.get('datasets') or ([ds['dataset']] if isinstance(ds.get('dataset'), dict) else None)
    if children:
        for c in children:
            yield from iter_datasets(c)
    else:
        yield ds


def loaders(cfg) -> List[dict]:
    return [cfg[k] for k in ('train_dataloader', 'val_dataloader', 'test_dataloader') if cfg.get(k)]


def _sizes(value) -> List[int]:
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _sizes(v)]
    return []


def _scaled(value, f):
    if isinstance(value, (int, float)):
        return max(8, int(round(value * f)))
    if isinstance(value, (list, tuple)):
        return type(value)(_scaled(v, f) for v in value)
    return value


def shrink_image_scale(cfg, short_side: int) -> float:
    """Scale every resize of every pipeline by short_side / (the config's largest short side); ``short_side <= 0``
    keeps the config's scale. Returns the factor."""
    if short_side <= 0:
        return 1.0
    resizes = []
    for loader in loaders(cfg):
        for ds in iter_datasets(loader['dataset']):
            resizes += [t for t in iter_transforms(ds.get('pipeline', [])) if any(k in t for k in SCALE_KEYS)]
    shorts = [min(_sizes(t['scale'])[:2]) for t in resizes if 'scale' in t and len(_sizes(t['scale'])) >= 2]
    shorts += [min(s) for t in resizes if 'scales' in t for s in t['scales'] if isinstance(s, (list, tuple))]
    shorts += [t['scale'] for t in resizes if isinstance(t.get('scale'), (int, float))]
    if not shorts:
        return 1.0
    f = short_side / max(shorts)
    for t in resizes:
        for k in SCALE_KEYS:
            if k in t and (k != 'crop_size' or t.get('crop_type', 'absolute') in ('absolute', 'absolute_range')):
                t[k] = _scaled(t[k], f)
    return f


def _detector(model: dict) -> dict:
    return model.get('detector', model) if isinstance(model, dict) else {}


def encoder_tokens(cfg, short_side: int, aspect: float = 4 / 3) -> int:
    """Encoder tokens of a multi-scale DETR at the smallest resize of every pipeline once shrunk to
    ``short_side`` (images of the given aspect, as the rehearsal writes them)."""
    probe = copy.deepcopy(cfg)
    shrink_image_scale(probe, short_side)
    sides = []
    for loader in loaders(probe):
        for ds in iter_datasets(loader['dataset']):
            for t in iter_transforms(ds.get('pipeline', [])):
                choices = t.get('scales') or ([t['scale']] if isinstance(t.get('scale'), (list, tuple)) else [])
                sides += [(min(c), max(c)) for c in choices if isinstance(c, (list, tuple))]
    if not sides:
        return 10**9
    det = _detector(cfg.model)
    levels = det.get('num_feature_levels', 4)
    strides = [(4 if levels >= 5 else 8) * 2**i for i in range(levels)]
    short, long_cap = min(sides)
    long = min(long_cap, short * aspect)
    return sum(math.ceil(short / s) * math.ceil(long / s) for s in strides)


def min_short_side(cfg, requested: int) -> int:
    """The smallest short side >= ``requested`` at which a two-stage DETR (DINO, Grounding DINO) still has at least
    ``num_queries`` encoder tokens to pick its queries from (``topk`` over tokens); ``requested`` otherwise."""
    det = _detector(cfg.get('model') or {})
    queries = det.get('num_queries')
    if requested <= 0 or not queries or 'encoder' not in det or det.get('selector_only'):
        return requested  # (CQ-DINO stage 1 never runs the transformer)
    side = requested
    while encoder_tokens(cfg, side) < queries:
        side += 16
    return side


def shrink_schedule(cfg, iters: int) -> dict:
    """Iteration-based: ``iters`` iterations, the O2M->O2O switch one iteration before the middle checkpoint (the
    resumed half then starts after the switch, so the switch state must come back from the checkpoint).
    Epoch-based: 2 epochs of ``iters // 2`` iterations each (the data writer sizes the set), schedule points scaled.
    Returns facts for the report (loop kind, iterations, switch point, resume point)."""
    tc = cfg.train_cfg
    by_epoch = tc.get('type') == 'EpochBasedTrainLoop' or 'max_epochs' in tc
    half = max(1, iters // 2)
    facts = dict(by_epoch=by_epoch)
    if by_epoch:
        old = tc['max_epochs']
        epochs = 2
        # the config does not validate during training (V3Det: val_begin=10**9): keep it so
        no_val = tc.get('val_interval', 1) > old or tc.get('val_begin', 1) > old
        tc.update(max_epochs=epochs)
        if not no_val:
            tc.update(val_interval=epochs, val_begin=1)
        f = epochs / old
        facts.update(epochs=epochs, iters_per_epoch=half, resume_from='epoch_1.pth', validates_in_training=not no_val)
    else:
        old = tc['max_iters']
        tc.update(max_iters=iters, val_interval=iters)
        f = iters / old
        facts.update(iters=iters, resume_from=f'iter_{half}.pth', validates_in_training=True)
    schedulers = cfg.get('param_scheduler') or []
    for s in [schedulers] if isinstance(schedulers, dict) else schedulers:  # mmpretrain configs: often one dict
        unit_iters = not s.get('by_epoch', True) or not by_epoch
        for k in ('begin', 'end'):
            if k in s and isinstance(s[k], int):
                if by_epoch and not s.get('by_epoch', True):  # warm-up in iterations inside an epoch schedule
                    s[k] = min(s[k], half)
                else:
                    s[k] = min(int(math.ceil(s[k] * f)), iters if unit_iters else 2)
        if 'milestones' in s:
            s['milestones'] = sorted({max(1, int(round(m * f))) for m in s['milestones']})
        if s.get('type') == 'CosineAnnealingLR' and 'T_max' in s:
            s['T_max'] = max(1, int(round(s['T_max'] * f)))
    for hook in cfg.get('custom_hooks') or []:
        if hook.get('type') == 'QVStageSwitchHook':
            hook['switch_iter'] = max(1, half - 1)
            facts['switch_iter'] = hook['switch_iter']
    hooks = cfg.default_hooks
    if 'checkpoint' in hooks:
        hooks.checkpoint.interval = 1 if by_epoch else half
        hooks.checkpoint.pop('max_keep_ckpts', None)
        if not facts['validates_in_training']:
            hooks.checkpoint.pop('save_best', None)
    if 'logger' in hooks:
        hooks.logger.interval = 1
    return facts


def shrink_loaders(cfg, workers: int = 0) -> None:
    for loader in loaders(cfg):
        loader['num_workers'] = min(loader.get('num_workers', 0), workers)
        if loader['num_workers'] == 0:
            loader['persistent_workers'] = False


def producer_of(load_from: str, config: str):
    """The shipped config (same folder) whose ``work_dir`` holds ``load_from`` (a stage-1 config for its stage 2),
    or None."""
    import glob
    import os.path as osp
    if not load_from or osp.isabs(load_from):
        return None
    for other in sorted(glob.glob(osp.join(osp.dirname(osp.abspath(config)), '*.py'))):
        if osp.samefile(other, config):
            continue
        work_dir = Config.fromfile(other).get('work_dir')
        if work_dir and osp.normpath(load_from).startswith(osp.normpath(work_dir) + osp.sep):
            return other
    return None


def rehearsal_config(cfg: Config, iters: int, short_side: int, workers: int = 0) -> (Config, dict):
    """The shrunk copy of ``cfg`` plus the probe hook that records trainable parameters without a gradient."""
    cfg = copy.deepcopy(cfg)
    needed = min_short_side(cfg, short_side)
    facts = dict(img_scale=needed)
    if needed != short_side:
        facts['img_scale_note'] = (f'raised from {short_side}: {_detector(cfg.model)["num_queries"]} queries need as '
                                   f'many encoder tokens at the smallest multi-scale choice')
    facts['scale_factor'] = shrink_image_scale(cfg, needed)
    if cfg.get('train_cfg') and cfg.get('train_dataloader'):
        facts.update(shrink_schedule(cfg, iters))
    shrink_loaders(cfg, workers)
    imports = cfg.get('custom_imports') or dict(imports=[], allow_failed_imports=False)
    imports['imports'] = list(imports['imports']) + ['queryvision_mm.testing.rehearsal.hooks']
    cfg.custom_imports = imports
    cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [dict(type='QVUnusedParamProbeHook')]
    return cfg, facts
