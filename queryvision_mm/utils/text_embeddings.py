"""Class-name text embeddings from a CLIP text tower, and their file format (safetensors + class list).

Shared by CQ-DINO (category-query initialisation) and QKS (prompt-pool label embeddings).
"""
import hashlib
import json
import os.path as osp
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor


def _check_inputs(class_names: Sequence[str], templates: Sequence[str]) -> None:
    if not class_names:
        raise ValueError('class_names is empty')
    for i, name in enumerate(class_names):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f'class_names[{i}] is not a non-empty string: {name!r}')
    if not templates:
        raise ValueError('templates is empty')
    for t in templates:
        if t.count('{}') != 1:
            raise ValueError(f'template {t!r} must contain exactly one "{{}}" placeholder')


@torch.no_grad()
def encode_class_names(model, tokenizer, class_names: Sequence[str], templates: Sequence[str] = ('a photo of a {}.', ),
                       normalize_each: bool = False, normalize_mean: bool = False, batch_size: int = 256,
                       device: Optional[str] = None, progress: bool = False) -> Tensor:
    """Mean over ``templates`` of ``model.encode_text`` for every class name -> (C, D) float32.

    ``normalize_each`` L2-normalises every prompt's embedding before averaging (CLIP zero-shot practice);
    ``normalize_mean`` normalises the average. QKS's prompt pool uses neither (unnormalised mean).
    """
    _check_inputs(class_names, templates)
    prompts = [t.format(name) for name in class_names for t in templates]
    dev = device or next(model.parameters()).device
    chunks = range(0, len(prompts), batch_size)
    if progress:
        from tqdm import tqdm
        chunks = tqdm(chunks, desc='text embeddings', unit='batch')
    feats = []
    for start in chunks:
        tokens = tokenizer(prompts[start:start + batch_size]).to(dev)
        out = model.encode_text(tokens).float()
        feats.append(torch.nn.functional.normalize(out, dim=-1) if normalize_each else out)
    emb = torch.cat(feats).view(len(class_names), len(templates), -1).mean(1)
    if normalize_mean:
        emb = torch.nn.functional.normalize(emb, dim=-1)
    return emb.cpu()


def templates_digest(templates: Sequence[str]) -> str:
    return hashlib.sha256('\n'.join(templates).encode()).hexdigest()[:16]


def save_class_embeddings(path: str, embeddings: Tensor, class_names: Sequence[str],
                          meta: Optional[Dict[str, str]] = None) -> str:
    """Save (C, D) embeddings with their class names (and e.g. model/template provenance) as safetensors."""
    from safetensors.torch import save_file
    if embeddings.dim() != 2 or embeddings.size(0) != len(class_names):
        raise ValueError(f'embeddings of shape {tuple(embeddings.shape)} do not match {len(class_names)} class names')
    metadata = {k: str(v) for k, v in (meta or {}).items()}
    metadata['class_names'] = json.dumps(list(class_names))
    save_file({'embeddings': embeddings.detach().float().contiguous().cpu()}, path, metadata=metadata)
    return path


def load_class_embeddings(path: str, expected_class_names: Optional[Sequence[str]] = None,
                          ) -> Tuple[Tensor, list, Dict[str, str]]:
    """Load a file written by :func:`save_class_embeddings`; with ``expected_class_names`` the class list must
    match exactly (count, then order/spelling), and the error names the file and the first difference."""
    from safetensors import safe_open
    if not osp.isfile(path):
        raise FileNotFoundError(f'class-embedding file not found: {path}')
    with safe_open(path, framework='pt') as f:
        meta = dict(f.metadata() or {})
        if 'embeddings' not in f.keys() or 'class_names' not in meta:
            raise ValueError(f'{path}: not a class-embedding file (needs tensor "embeddings" and metadata '
                             f'"class_names")')
        emb = f.get_tensor('embeddings')
    names = json.loads(meta.pop('class_names'))
    if emb.size(0) != len(names):
        raise ValueError(f'{path}: {emb.size(0)} embeddings for {len(names)} class names')
    if expected_class_names is not None:
        expected = list(expected_class_names)
        if len(expected) != len(names):
            raise ValueError(f'{path}: holds {len(names)} classes, the dataset has {len(expected)}')
        for i, (a, b) in enumerate(zip(names, expected)):
            if a != b:
                raise ValueError(f'{path}: class {i} is {a!r} in the file but {b!r} in the dataset')
    return emb, names, meta
