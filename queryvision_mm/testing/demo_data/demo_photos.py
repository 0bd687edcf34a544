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

``python -m queryvision_mm.testing.demo_data.demo_photos --out-dir data/demo_qks`` (numpy + Pillow only).
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


def _previous_run(out_dir: str, params: dict, overwrite: bool) -> Optional[Dict[str, int]]:
    """The counts of a finished run with the same parameters (nothing to do), else None after removing old images."""
    marker = osp.join(out_dir, '.complete')
    if not overwrite and osp.isfile(marker):
        with open(marker) as f:
            done = json.load(f)
        if done.get('params') == params:
            return done['counts']
    if osp.isdir(osp.join(out_dir, 'images')):
        shutil.rmtree(osp.join(out_dir, 'images'))
    return None


def _mark_complete(out_dir: str, params: dict, counts: Dict[str, int]) -> Dict[str, int]:
    with open(osp.join(out_dir, '.complete'), 'w') as f:
        json.dump(dict(params=params, counts=counts), f)
    return counts


def generate_demo_qks(out_dir: str, crops_train: int = 12, crops_val: int = 3, size: int = 96, min_scale: float = 0.75,
                      seed: int = 0, overwrite: bool = False) -> Dict[str, int]:
    """Write the QKS demo set (see the module docstring); returns image counts. Deterministic for a given seed."""
    params = dict(crops_train=crops_train, crops_val=crops_val, size=size, min_scale=min_scale, seed=seed,
                  photos=[k for k, *_ in PHOTOS], seen=list(SEEN), unseen=list(UNSEEN))
    done = _previous_run(out_dir, params, overwrite)
    if done is not None:
        return done
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
    return _mark_complete(out_dir, params, {k: len(v) for k, v in splits.items()})


# ------------------------------------------------------------------------------------------- MaO (SoIR) demo
# small objects cut from photos (key, crop box in the source photo) -> instance ids 0, 1, 2
SOIR_OBJECTS = (('gift', 'present', None), ('cup', 'coffee', (40, 10, 380, 330)), ('cat', 'chelsea', (140, 20, 330, 200)))
SOIR_BACKGROUNDS = ('china', 'flower', 'brick', 'grass', 'hubble', 'coins', 'camera', 'astronaut', 'motorcycle_left',
                    'page', 'horse', 'grace_hopper')


def _paste(canvas: Image.Image, obj: Image.Image, side: int, rng: np.random.Generator):
    w, h = obj.size
    s = side / max(w, h)
    obj = obj.resize((max(4, round(w * s)), max(4, round(h * s))), Image.BICUBIC)
    x = int(rng.integers(0, canvas.width - obj.width + 1))
    y = int(rng.integers(0, canvas.height - obj.height + 1))
    canvas.paste(obj, (x, y))
    return [x, y, x + obj.width, y + obj.height]


def generate_demo_soir(out_dir: str, size: Tuple[int, int] = (240, 180), object_side: Tuple[int, int] = (26, 40),
                       queries_per_object: int = 2, seed: int = 0, overwrite: bool = False) -> Dict[str, int]:
    """Tiny small-object retrieval set (MaO demo) in the generic SoIR JSON format (``annotations/anns.json``).

    Gallery: 12 photos (``SOIR_BACKGROUNDS``), each with 0-2 of 3 objects cut from other photos (a gift box, a coffee
    cup, a cat's head) pasted at 26-40 px on a 240x180 image (about 1.5-4 % of the image area); 2 gallery images hold
    no object. Queries: each object at about 100 px on a grey canvas, with its box. Deterministic for a seed.
    """
    params = dict(size=list(size), object_side=list(object_side), queries_per_object=queries_per_object, seed=seed,
                  objects=[list(o[:2]) for o in SOIR_OBJECTS], backgrounds=list(SOIR_BACKGROUNDS))
    done = _previous_run(out_dir, params, overwrite)
    if done is not None:
        return done
    os.makedirs(osp.join(out_dir, 'images', 'gallery'))
    os.makedirs(osp.join(out_dir, 'images', 'query'))
    rng = np.random.default_rng(seed)
    paths = locate_photos()
    objects = []
    for _, key, box in SOIR_OBJECTS:
        im = load_rgb(paths[key])
        objects.append(im.crop(box) if box else im)
    # which objects each gallery image holds: each instance in 4-5 images, two images without any
    layout = [(0, ), (1, ), (2, ), (0, 1), (1, 2), (0, 2), (), (0, ), (1, ), (2, ), (), (0, 1)]
    anns = {}
    for i, (bg_key, objs) in enumerate(zip(SOIR_BACKGROUNDS, layout)):
        bg = load_rgb(paths[bg_key])
        canvas = _crop(rng, bg, max(size), 0.8).resize(size, Image.BICUBIC)
        boxes = [_paste(canvas, objects[o], int(rng.integers(object_side[0], object_side[1] + 1)), rng)
                 for o in objs]
        rel = f'images/gallery/{i:02d}_{bg_key}.jpg'
        canvas.save(osp.join(out_dir, rel), quality=92)
        anns[rel] = dict(bbox=boxes, ins=list(objs), is_query=False, set='demo')
    for o, (name, _, _) in enumerate(SOIR_OBJECTS):
        for k in range(queries_per_object):
            grey = int(rng.integers(90, 170))
            canvas = Image.new('RGB', (160, 160), (grey, grey, grey))
            box = _paste(canvas, objects[o], int(rng.integers(90, 121)), rng)
            rel = f'images/query/{name}_{k}.jpg'
            canvas.save(osp.join(out_dir, rel), quality=92)
            anns[rel] = dict(bbox=box, ins=o, is_query=True, set='demo', obj_name=name)
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    with open(osp.join(out_dir, 'annotations', 'anns.json'), 'w') as f:
        json.dump(anns, f, indent=1)
    return _mark_complete(out_dir, params,
                          dict(gallery=len(SOIR_BACKGROUNDS), queries=len(SOIR_OBJECTS) * queries_per_object))


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


# random stand-ins for the MaO demo (no OWLv2 / SAM / CLIP weights can be downloaded here), real classes, small
DEMO_OWLV2 = dict(text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                   vocab_size=1000, max_position_embeddings=16),
                  vision_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                     image_size=256, patch_size=16), projection_dim=32)
DEMO_SAM_ARCH = dict(img_size=256, patch_size=16, embed_dim=64, depth=2, num_heads=2, prompt_dim=32, mlp_dim=64,
                     decoder_depth=1, decoder_heads=2)


def make_random_mao_models(out_dir: str, seed: int = 0) -> Dict[str, str]:
    """Save random OWLv2 (transformers folder), SAM (state dict of segment-anything's Sam at ``DEMO_SAM_ARCH``) and
    CLIP (open_clip local-dir) stand-ins under ``out_dir``; they load through the same loaders as real weights."""
    import torch
    import transformers
    from segment_anything.modeling import Sam  # noqa: F401  (fail early when segment-anything is missing)

    from queryvision_mm.models.retrievers.mao_components import build_sam_from_arch
    paths = dict(owlv2=osp.join(out_dir, 'owlv2_random'), sam=osp.join(out_dir, 'sam_random.pth'),
                 clip=osp.join(out_dir, 'clip_random'))
    if not osp.isfile(osp.join(paths['owlv2'], 'config.json')):
        torch.manual_seed(seed)
        transformers.Owlv2ForObjectDetection(transformers.Owlv2Config(**DEMO_OWLV2)).save_pretrained(paths['owlv2'])
    if not osp.isfile(paths['sam']):
        torch.manual_seed(seed)
        torch.save(build_sam_from_arch(**DEMO_SAM_ARCH).state_dict(), paths['sam'])
    make_random_clip(paths['clip'], seed=seed)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description='QKS demo set from real photos shipped by installed packages')
    p.add_argument('--task', choices=('qks', 'mao'), default='qks',
                   help='qks: multi-label set (default); mao: small-object retrieval gallery + queries')
    p.add_argument('--out-dir', default=None, help='default data/demo_qks or data/demo_mao')
    p.add_argument('--crops-train', type=int, default=12)
    p.add_argument('--crops-val', type=int, default=3)
    p.add_argument('--size', type=int, default=96)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--overwrite', action='store_true')
    p.add_argument('--random-clip', action='store_true',
                   help='also save a randomly initialised CLIP (DEMO_CLIP) to OUT_DIR/clip_random (needs open_clip); '
                   'with --task mao also random OWLv2 and SAM stand-ins')
    args = p.parse_args(argv)
    if args.task == 'mao':
        out = args.out_dir or 'data/demo_mao'
        print(f'demo photos (MaO) in {out}: {generate_demo_soir(out, seed=args.seed, overwrite=args.overwrite)}')
        if args.random_clip:
            print('random OWLv2 / SAM / CLIP (no real weights offline):', make_random_mao_models(out))
        return 0
    args.out_dir = args.out_dir or 'data/demo_qks'
    counts = generate_demo_qks(args.out_dir, args.crops_train, args.crops_val, args.size, seed=args.seed,
                               overwrite=args.overwrite)
    print(f'demo photos (QKS) in {args.out_dir}: {counts}')
    if args.random_clip:
        print('random CLIP (no real weights offline):', make_random_clip(osp.join(args.out_dir, 'clip_random')))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
