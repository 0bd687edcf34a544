"""Offline open_clip loading, shared by the papers that use CLIP (CQ-DINO embeddings, QKS, MaO).

Only local weights are accepted: an open_clip ``local-dir:`` folder (``open_clip_config.json`` +
``open_clip_model.safetensors``) or a built-in model name with ``pretrained`` = a local file. Pretrained *tags*
(``'openai'``, ``'laion2b_s34b_b79k'``) and ``hf-hub:`` names download at run time and are refused with an
explanation instead of hanging on a network that is not there.
"""
import json
import os
import os.path as osp
from contextlib import contextmanager
from typing import Optional, Tuple

#: The open_clip release whose private ``VisionTransformer._embeds`` / ``._pool`` LeGrad (MaO) calls (no public API
#: returns the token embeddings before the first block); pinned in requirements/optional.txt.
OPEN_CLIP_PRIVATE_API_VERSION = '3.3.0'


def check_open_clip_private_api(user: str) -> None:
    """Raise a clear error unless the installed open_clip is :data:`OPEN_CLIP_PRIVATE_API_VERSION`, whose private
    ``VisionTransformer._embeds`` / ``_pool`` ``user`` relies on."""
    import open_clip
    version = getattr(open_clip, '__version__', 'unknown')
    if version != OPEN_CLIP_PRIVATE_API_VERSION:
        raise RuntimeError(
            f'{user} uses open_clip private API (VisionTransformer._embeds / _pool) verified with open_clip_torch=='
            f'{OPEN_CLIP_PRIVATE_API_VERSION} (requirements/optional.txt); installed: {version}. Install that '
            f'version: pip install open_clip_torch=={OPEN_CLIP_PRIVATE_API_VERSION}')


@contextmanager
def _offline():
    keys = ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE')
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: '1' for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_open_clip(model_name: str, pretrained: Optional[str] = None, device: str = 'cpu',
                   precision: str = 'fp32') -> Tuple[object, object, object]:
    """Load an open_clip model from local files only.

    Args:
        model_name: ``'local-dir:/path'`` or a built-in open_clip name (``'ViT-B-16'``).
        pretrained: with a built-in name, a local ``.safetensors``/``.bin``/``.pth`` file (loaded with
            ``weights_only=True``); None gives random weights (tests only).

    Returns:
        (model in eval mode, preprocess transform, tokenizer)
    """
    import open_clip
    if model_name.startswith('hf-hub:'):
        raise ValueError(f'{model_name!r} downloads from the Hugging Face hub; download it once elsewhere and pass '
                         f'"local-dir:<folder>" (open_clip_config.json + weights) instead')
    if model_name.startswith('local-dir:'):
        folder = model_name[len('local-dir:'):]
        if not osp.isfile(osp.join(folder, 'open_clip_config.json')):
            raise FileNotFoundError(f'open_clip local-dir {folder!r} has no open_clip_config.json')
        if pretrained is not None:
            raise ValueError('pretrained is ignored for local-dir: models; put the weights into the folder')
    elif pretrained is not None and not osp.isfile(pretrained):
        hint = ' (an open_clip pretrained tag would be downloaded; pass a local weights file)' \
            if osp.sep not in pretrained and '.' not in pretrained else ''
        raise FileNotFoundError(f'open_clip weights file not found: {pretrained!r}{hint}')
    with _offline():
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, device=device, precision=precision)
        tokenizer = open_clip.get_tokenizer(model_name)
    model.eval()
    return model, preprocess, tokenizer


def save_open_clip_dir(model, model_cfg: dict, out_dir: str, preprocess_cfg: Optional[dict] = None) -> str:
    """Write ``model`` as an open_clip ``local-dir`` folder (config + safetensors) and return its ``local-dir:`` name."""
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, osp.join(out_dir, 'open_clip_model.safetensors'))
    cfg = dict(model_cfg=model_cfg)
    if preprocess_cfg is not None:
        cfg['preprocess_cfg'] = preprocess_cfg
    with open(osp.join(out_dir, 'open_clip_config.json'), 'w') as f:
        json.dump(cfg, f, indent=2)
    return 'local-dir:' + out_dir
