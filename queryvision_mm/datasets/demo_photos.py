"""Real photographs shipped inside installed Python packages, tagged by hand, and the QKS demo set built from them.

No photo is committed to this repository: each is located inside its package (scikit-image, scikit-learn,
matplotlib -- all in ``requirements/``) at run time, without downloading anything. The image-level tags below were
checked by eye; they name what is clearly visible (``astronaut.png`` shows a person, a flag, a helmet and a shuttle
on its rockets; ``camera.png`` a person with a camera on grass under the sky with buildings far away).

:func:`generate_demo_qks` writes a tiny open-vocabulary multi-label set in the layout of
``tools/dataset_converters/nuswide_to_json.py`` (``annotations/{train,val,test}.json``, ``labels_{seen,unseen}.txt``):
training and validation images are random crops of the photos with their *seen* tags only (photos without a seen
tag are left out, as in NUS-WIDE); test images are the whole photos (and their mirror images) with seen and unseen
tags. Every unseen label has at least one test photo. It measures that the whole QKS pipeline runs (seen labels are
learnt from crops and recognised on whole photos); with the demo's randomly initialised CLIP it says nothing about
zero-shot accuracy -- for that, real CLIP weights are needed (README, "QKS").

``python -m queryvision_mm.datasets.demo_photos --out-dir data/demo_qks`` (numpy + Pillow only).
"""
import argparse
import importlib.util
import json
import os
import os.path as osp
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

# (key, package, path inside the package, tags)
PHOTOS: Tuple[Tuple[str, str, str, Tuple[str, ...]], ...] = (
    ('astronaut', 'skimage', 'data/astronaut.png', ('person', 'flag', 'helmet', 'rocket')),
    ('camera', 'skimage', 'data/camera.png', ('person', 'camera', 'grass', 'sky', 'building')),
    ('chelsea', 'skimage', 'data/chelsea.png', ('cat', )),
    ('coffee', 'skimage', 'data/coffee.png', ('cup', 'spoon', 'table')),
    ('rocket', 'skimage', 'data/rocket.jpg', ('rocket', 'sky', 'tower')),
    ('motorcycle_left', 'skimage', 'data/motorcycle_left.png', ('motorcycle', )),
    ('motorcycle_right', 'skimage', 'data/motorcycle_right.png', ('motorcycle', )),
    ('hubble', 'skimage', 'data/hubble_deep_field.jpg', ('galaxy', )),
    ('horse', 'skimage', 'data/horse.png', ('horse', )),
    ('coins', 'skimage', 'data/coins.png', ('coin', )),
    ('brick', 'skimage', 'data/brick.png', ('wall', )),
    ('grass', 'skimage', 'data/grass.png', ('grass', )),
    ('page', 'skimage', 'data/page.png', ('text', )),
    ('text', 'skimage', 'data/text.png', ('text', )),
    ('china', 'sklearn', 'datasets/images/china.jpg', ('building', 'tree', 'sky')),
    ('flower', 'sklearn', 'datasets/images/flower.jpg', ('flower', )),
    ('grace_hopper', 'matplotlib', 'mpl-data/sample_data/grace_hopper.jpg', ('person', 'flag', 'hat')),
    ('present', 'matplotlib', 'mpl-data/sample_data/Minduka_Present_Blue_Pack.png', ('gift', )),
)
SEEN = ('person', 'sky', 'building', 'cat', 'flower', 'cup', 'coin', 'grass', 'wall', 'hat', 'table', 'galaxy',
        'horse', 'text', 'gift', 'tower')
UNSEEN = ('flag', 'rocket', 'motorcycle', 'spoon', 'camera', 'tree', 'helmet')
PIP_NAMES = {'skimage': 'scikit-image', 'sklearn': 'scikit-learn', 'matplotlib': 'matplotlib'}


def package_file(package: str, rel: str) -> str:
    """Absolute path of ``rel`` inside an installed ``package`` (found without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f'package {package!r} is not installed; it ships the demo photo {rel} '
                                  f'(pip install {PIP_NAMES.get(package, package)}, or bash tools/setup_env.sh)')
    path = osp.join(list(spec.submodule_search_locations)[0], rel)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{package} is installed but has no {rel} ({path}); another version of the package?')
    return path


def locate_photos(keys: Optional[Sequence[str]] = None) -> Dict[str, str]:
    """key -> absolute path for the tagged photos (all, or ``keys``)."""
    table = {k: (pkg, rel) for k, pkg, rel, _ in PHOTOS}
    unknown = [k for k in (keys or ()) if k not in table]
    if unknown:
        raise KeyError(f'unknown demo photo {unknown[0]!r}; known: {sorted(table)}')
    return {k: package_file(*table[k]) for k in (keys or table)}


def load_rgb(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert('RGB')


def _crop(rng: np.random.Generator, im: Image.Image, size: int, min_scale: float) -> Image.Image:
    w, h = im.size
    side = int(min(w, h) * rng.uniform(min_scale, 1.0))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    out = im.crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC)
    return out.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else out


def _whole(im: Image.Image, size: int, flip: bool) -> Image.Image:
    w, h = im.size
    s = size / min(w, h)
    out = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    return out.transpose(Image.FLIP_LEFT_RIGHT) if flip else out


def generate_demo_qks(out_dir: str, crops_train: int = 12, crops_val: int = 3, size: int = 96, min_scale: float = 0.75,
                      seed: int = 0, overwrite: bool = False) -> Dict[str, int]:
    """Write the QKS demo set (see the module docstring); returns image counts. Deterministic for a given seed."""
    params = dict(crops_train=crops_train, crops_val=crops_val, size=size, min_scale=min_scale, seed=seed,
                  photos=[k for k, *_ in PHOTOS], seen=list(SEEN), unseen=list(UNSEEN))
    marker = osp.join(out_dir, '.complete')
    if not overwrite and osp.isfile(marker):
        with open(marker) as f:
            done = json.load(f)
        if done.get('params') == params:
            return done['counts']
    if osp.isdir(osp.join(out_dir, 'images')):
        shutil.rmtree(osp.join(out_dir, 'images'))
    classes = list(SEEN) + list(UNSEEN)
    index = {c: i for i, c in enumerate(classes)}
    for key, _, _, tags in PHOTOS:
        bad = [t for t in tags if t not in index]
        if bad:
            raise ValueError(f'demo photo {key}: tag {bad[0]!r} is in neither SEEN nor UNSEEN')
    rng = np.random.default_rng(seed)
    paths = locate_photos()
    splits: Dict[str, List[dict]] = dict(train=[], val=[], test=[])
    for key, _, _, tags in PHOTOS:
        im = load_rgb(paths[key])
        seen_tags = sorted(index[t] for t in tags if t in SEEN)
        jobs = [('test', _whole(im, size, flip), f'{key}_{"flip" if flip else "full"}') for flip in (False, True)]
        if seen_tags:
            jobs += [(split, _crop(rng, im, size, min_scale), f'{key}_{split}{k}')
                     for split, n in (('train', crops_train), ('val', crops_val)) for k in range(n)]
        for split, img, name in jobs:
            rel = f'images/{split}/{name}.jpg'
            os.makedirs(osp.join(out_dir, osp.dirname(rel)), exist_ok=True)
            img.save(osp.join(out_dir, rel), quality=92)
            labels = sorted(index[t] for t in tags) if split == 'test' else seen_tags
            splits[split].append(dict(img_path=rel, gt_label=labels))
    meta = dict(classes=classes, num_seen=len(SEEN), negatives='complement', dataset='demo-photos')
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    for split, items in splits.items():
        with open(osp.join(out_dir, 'annotations', f'{split}.json'), 'w') as f:
            json.dump(dict(metainfo=meta, data_list=items), f, indent=1)
    for name, labels in (('labels_seen.txt', SEEN), ('labels_unseen.txt', UNSEEN)):
        with open(osp.join(out_dir, name), 'w') as f:
            f.write('\n'.join(labels) + '\n')
    counts = {k: len(v) for k, v in splits.items()}
    with open(marker, 'w') as f:
        json.dump(dict(params=params, counts=counts), f)
    return counts


# the demo's CLIP: open_clip's own CLIP class, ViT image tower and text tower of the real family, shrunk
DEMO_CLIP = dict(embed_dim=64, vision_cfg=dict(image_size=64, layers=3, width=128, patch_size=8, head_width=64),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2))


def make_random_clip(out_dir: str, model_cfg: Optional[dict] = None, seed: int = 0) -> str:
    """Save a randomly initialised open_clip CLIP (``DEMO_CLIP``) as a ``local-dir`` folder; returns its name.

    No CLIP weights can be downloaded here; the demo (and tests) load this folder through the same open_clip loader
    as real weights (``local-dir:<folder>``). Skipped when the folder already holds the same configuration.
    """
    import open_clip
    import torch

    from queryvision_mm.utils.open_clip_loader import save_open_clip_dir
    model_cfg = model_cfg or DEMO_CLIP
    cfg_file = osp.join(out_dir, 'open_clip_config.json')
    if osp.isfile(cfg_file) and osp.isfile(osp.join(out_dir, 'open_clip_model.safetensors')):
        with open(cfg_file) as f:
            if json.load(f).get('model_cfg') == json.loads(json.dumps(model_cfg)):
                return 'local-dir:' + out_dir
    torch.manual_seed(seed)
    return save_open_clip_dir(open_clip.CLIP(**model_cfg), model_cfg, out_dir)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description='QKS demo set from real photos shipped by installed packages')
    p.add_argument('--out-dir', default='data/demo_qks')
    p.add_argument('--crops-train', type=int, default=12)
    p.add_argument('--crops-val', type=int, default=3)
    p.add_argument('--size', type=int, default=96)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--overwrite', action='store_true')
    p.add_argument('--random-clip', action='store_true',
                   help='also save a randomly initialised CLIP (DEMO_CLIP) to OUT_DIR/clip_random (needs open_clip)')
    args = p.parse_args(argv)
    counts = generate_demo_qks(args.out_dir, args.crops_train, args.crops_val, args.size, seed=args.seed,
                               overwrite=args.overwrite)
    print(f'demo photos (QKS) in {args.out_dir}: {counts}')
    if args.random_clip:
        print('random CLIP (no real weights offline):', make_random_clip(osp.join(args.out_dir, 'clip_random')))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
