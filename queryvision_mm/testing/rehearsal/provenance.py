"""Where every weight of a model comes from, found empirically by building and initialising the model three times
with its own code (``__init__`` and ``init_weights``, so Pretrained ``init_cfg`` files and local weight files load
as in training): seeds 1 and 3 as is, seed 2 with every stand-in weight file perturbed (its floating tensors shifted,
then restored). A parameter equal in all three is a fixed initialisation (LayerNorm ones, zero biases, MSDA's
sampling-offset grid); equal in builds 1 and 3 but changed by the perturbation, it came from a file; otherwise it is
random. Parameters found in the ``load_from`` checkpoint with the same shape come from it (they overwrite the rest
when the Runner loads it)."""
import contextlib
import copy
import os
import os.path as osp
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import torch

WRAPPERS = ('student', 'teacher', 'detector', 'module', 'data_preprocessor')


def component(name: str) -> str:
    parts = name.split('.')
    keep = 1
    while keep < len(parts) and parts[keep - 1] in WRAPPERS:
        keep += 1
    return '.'.join(parts[:keep])


def _build(model_cfg, seed: int):
    from mmengine.registry import MODELS
    torch.manual_seed(seed)
    model = MODELS.build(copy.deepcopy(model_cfg))  # mmdet's DETR __init__ edits its bbox_head config in place
    if hasattr(model, 'init_weights'):
        model.init_weights()
    return model


WEIGHT_SUFFIXES = ('.pth', '.pt', '.bin', '.safetensors')


def _weight_files(paths: Sequence[str]) -> List[str]:
    out = []
    for p in paths:
        if osp.isdir(p):
            out += [osp.join(d, f) for d, _, fs in os.walk(p) for f in sorted(fs) if f.endswith(WEIGHT_SUFFIXES)]
        elif osp.isfile(p) and p.endswith(WEIGHT_SUFFIXES):
            out.append(p)
    # once each: a file read by two components (MaO stage A: model.encoder and describer.encoder) perturbed twice
    # lost its backup
    return list(dict.fromkeys(osp.abspath(f) for f in out))


def _shift(state):
    if isinstance(state, torch.Tensor):
        return state + 1.0 if state.is_floating_point() else state
    if isinstance(state, dict):
        return type(state)((k, _shift(v)) for k, v in state.items())
    return state


@contextlib.contextmanager
def _perturbed_package_file(f: str, tmp: str):
    """An installed package's weight file (``efficientnet-lite://``) is never touched: a shifted copy is written to
    ``tmp`` and the scheme's resolver points at it while the context is open."""
    from queryvision_mm.models.backbones import efficientnet_lite
    shifted = osp.join(tmp, osp.basename(f))
    torch.save(_shift(torch.load(f, map_location='cpu', weights_only=True)), shifted)
    original = efficientnet_lite.find_efficientnet_lite_checkpoint
    efficientnet_lite.find_efficientnet_lite_checkpoint = \
        lambda variant='lite0': shifted if original(variant) == f else original(variant)
    try:
        yield
    finally:
        efficientnet_lite.find_efficientnet_lite_checkpoint = original


def _installed_package_files() -> set:
    try:
        from queryvision_mm.models.backbones.efficientnet_lite import find_efficientnet_lite_checkpoint
        return {osp.abspath(find_efficientnet_lite_checkpoint('lite0'))}
    except (ImportError, FileNotFoundError):
        return set()


@contextlib.contextmanager
def perturbed(paths: Sequence[str]):
    """Every weight file under ``paths`` with its floating tensors shifted by 1, restored on exit (files of installed
    packages: a shifted copy, the original untouched)."""
    import tempfile
    moved = []
    packaged = _installed_package_files()
    stack = contextlib.ExitStack()
    try:
        for f in _weight_files(paths):
            if f in packaged:
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix='provenance-'))
                stack.enter_context(_perturbed_package_file(f, tmp))
                continue
            bak = f + '.provenance-bak'
            os.replace(f, bak)
            moved.append((bak, f))
            if f.endswith('.safetensors'):
                from safetensors import safe_open
                from safetensors.torch import save_file
                with safe_open(bak, framework='pt') as h:
                    meta = h.metadata()
                    tensors = {k: h.get_tensor(k) for k in h.keys()}
                save_file(_shift(tensors), f, metadata=meta)
            else:
                torch.save(_shift(torch.load(bak, map_location='cpu', weights_only=True)), f)
        yield
    finally:
        stack.close()
        for bak, f in moved:
            os.replace(bak, f)


def _parts(model_cfg):
    """[(prefix, config)] of the model, compared one at a time: the model itself, or, when it is not an
    ``nn.Module`` but a holder of modules built from its arguments (MaO's ``QVMaODescriber``: encoder, proposals,
    masks), each of those (peak memory: two copies of the largest part, not of the whole)."""
    from mmengine.registry import MODELS
    cls = None
    if isinstance(model_cfg.get('type'), str):
        with MODELS.switch_scope_and_registry(None) as registry:  # the default scope's registry, as build() uses
            cls = registry.get(model_cfg['type'])
    if cls is None or issubclass(cls, torch.nn.Module):
        return [('', model_cfg)]
    return [(f'{k}.', v) for k, v in model_cfg.items() if isinstance(v, dict) and 'type' in v]


def weight_sources(cfg, load_from_state: Optional[Dict[str, torch.Tensor]] = None,
                   weight_files: Sequence[str] = ()) -> Dict[str, Dict]:
    """{component: {'total': n, 'trainable': n, 'load_from': n, 'pretrained': n, 'random': n, 'fixed': n}}
    counted in parameter elements."""
    out: Dict[str, Dict] = OrderedDict()
    for prefix, model_cfg in _parts(cfg.model):
        _compare(model_cfg, prefix, load_from_state, weight_files, out)
    return out


def _compare(model_cfg, prefix: str, load_from_state, weight_files, out: Dict[str, Dict]) -> None:
    m1 = _build(model_cfg, 1)
    params = dict(m1.named_parameters())
    # one other build alive at a time (MaO: SAM ViT-H is 2.5 GB a copy)
    with perturbed(weight_files):
        other = dict(_build(model_cfg, 2).named_parameters())
    eq2 = {k: torch.equal(p, other[k]) for k, p in params.items()}
    del other
    other = dict(_build(model_cfg, 3).named_parameters())
    eq3 = {k: torch.equal(p, other[k]) for k, p in params.items()}
    del other
    for name, p in m1.named_parameters():
        own = name
        name = prefix + name
        row = out.setdefault(component(name), dict(total=0, trainable=0, load_from=0, pretrained=0, random=0,
                                                   fixed=0))
        n = p.numel()
        row['total'] += n
        row['trainable'] += n if p.requires_grad else 0
        if load_from_state is not None and name in load_from_state and load_from_state[name].shape == p.shape:
            row['load_from'] += n
        elif eq2[own] and eq3[own]:
            row['fixed'] += n
        elif eq3[own]:
            row['pretrained'] += n
        else:
            row['random'] += n


def summarise(sources: Dict[str, Dict]) -> str:
    """Components grouped by where most of their weights come from (minor shares in brackets); a teacher whose
    sources equal its student's is folded into one note."""
    keys = ('load_from', 'pretrained', 'random')
    groups: Dict[str, List[str]] = {k: [] for k in keys}
    folded = False
    for comp, r in sources.items():
        if comp.startswith('teacher.'):
            twin = sources.get('student.' + comp[len('teacher.'):])
            if twin is not None and all(twin[k] == r[k] for k in keys):
                folded = True
                continue
        counted = {k: r[k] for k in keys if r[k]}
        if not counted:
            continue
        main = max(counted, key=counted.get)
        name = comp[len('student.'):] if comp.startswith('student.') else comp
        if r['trainable'] == 0:
            name += ' [frozen]'
        if len(counted) > 1:
            total = sum(counted.values())
            name += ' (' + ', '.join(f'{k} {100 * v / total:.0f}%' for k, v in counted.items() if k != main) + ')'
        groups[main].append(name)
    text = '; '.join(f'**{k}**: ' + ', '.join(v) for k, v in groups.items() if v)
    return text + ('; teacher = student' if folded else '')
