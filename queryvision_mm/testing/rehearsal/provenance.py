"""Where every weight of a model comes from, found empirically: the model is built and initialised twice with
different seeds (its own ``init_weights``, so Pretrained ``init_cfg`` files load as in training). A parameter equal in
both builds and not constant came from a file; one that differs is random; one whose elements are all equal is a
constant initialisation (LayerNorm ones, zero biases). Parameters found in the ``load_from`` checkpoint with the
same shape come from it (they overwrite the rest when the Runner loads it)."""
from collections import OrderedDict
from typing import Dict, Optional

import torch

WRAPPERS = ('student', 'teacher', 'detector', 'module', 'data_preprocessor')


def component(name: str) -> str:
    parts = name.split('.')
    keep = 1
    while keep < len(parts) and parts[keep - 1] in WRAPPERS:
        keep += 1
    return '.'.join(parts[:keep])


def _build(cfg, seed: int):
    from mmengine.registry import MODELS
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    if hasattr(model, 'init_weights'):
        model.init_weights()
    return model


def weight_sources(cfg, load_from_state: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, Dict]:
    """{component: {'total': n, 'trainable': n, 'load_from': n, 'pretrained': n, 'random': n, 'constant': n}}
    counted in parameter elements."""
    m1 = _build(cfg, 1)
    p2 = dict(_build(cfg, 2).named_parameters())
    out: Dict[str, Dict] = OrderedDict()
    for name, p in m1.named_parameters():
        row = out.setdefault(component(name), dict(total=0, trainable=0, load_from=0, pretrained=0, random=0,
                                                   constant=0))
        n = p.numel()
        row['total'] += n
        row['trainable'] += n if p.requires_grad else 0
        if load_from_state is not None and name in load_from_state and load_from_state[name].shape == p.shape:
            row['load_from'] += n
        elif p.numel() > 1 and bool((p == p.reshape(-1)[0]).all()):
            row['constant'] += n
        elif torch.equal(p, p2[name]):
            row['pretrained'] += n
        else:
            row['random'] += n
    return out


def summarise(sources: Dict[str, Dict]) -> str:
    """One line per component: the dominant source and the random share (what the report shows)."""
    parts = []
    for comp, r in sources.items():
        srcs = [k for k in ('load_from', 'pretrained', 'random') if r[k]]
        share = ', '.join(f'{k} {100 * r[k] / r["total"]:.0f}%' for k in srcs)
        parts.append(f'{comp}: {share or "constant"}')
    return '; '.join(parts)
