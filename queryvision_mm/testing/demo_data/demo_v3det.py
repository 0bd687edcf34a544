"""Deterministic mini V3Det-format dataset ("demo V3Det") for the CQ-DINO demo and tests.

The real V3Det (13,204 classes) cannot be shipped; this generator writes a small set with the *same files and
formats*, including the parts that break naive implementations:

* a class-name file in V3Det's style (one raw name per line, line order = category id order, names disambiguated with
  "(...)"): two classes, ``star (five-pointed)`` and ``star (six-pointed)``, have the same cleaned name ("star") --
  the official CQ-DINO's name lookup merges such pairs, label ids must not;
* a category tree in the official ``v3det_2023_v1_category_tree.json`` schema (``categoryid2treeid``, ``id2name``,
  ``father2child``, ``child2father``, ``ancestor2descendant``, ``descendant2ancestor``, ``id2desc``) with WordNet-style
  node ids, non-category nodes (``entity``, ``shape``, ``symbol``), categories that are not leaves (``polygon``,
  ``round shape`` have children *and* images of their own) and a multi-parent DAG (the stars are polygons and
  symbols);
* COCO-style train/val JSON with V3Det's category fields and file names ``images/<tree node>/<file>.jpg`` (folder of
  the image's first object, as V3Det groups images by category).

Images are rendered with :mod:`demo_shapes`' placement rules (textured background, 1-4 shapes, tight visible boxes).
Shape colours (``colours``):

* ``'random'`` (default): one rule for every category -- a uniformly random hue, saturation 0.65-1, brightness
  0.55-1 -- so colour says nothing about the category and a detector must tell the categories apart by **shape**, as
  it would tell real V3Det categories apart by appearance (the CQ-DINO demo does so with the ImageNet-pretrained
  EfficientNet-Lite0);
* ``'hue'``: each category has its own hue (evenly spaced on the colour wheel, saturation and brightness jittered),
  a colour shortcut that a small detector trained from scratch on CPU learns in minutes (generator version 2's only
  mode; kept for experiments and tests that want an easy set).

Layout written by :func:`generate_demo_v3det`::

    out_dir/
      images/<node id>/<split>_<image id>.jpg
      annotations/category_name_demo_v3det.txt
      annotations/demo_v3det_category_tree.json
      annotations/demo_v3det_train.json
      annotations/demo_v3det_val.json
      .complete

Only numpy and Pillow are needed; ``python -m queryvision_mm.testing.demo_data.demo_v3det --out-dir data/demo_v3det``.
"""
import argparse
import json
import math
import os
import os.path as osp
import re
import shutil
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

try:
    from . import demo_shapes
except ImportError:  # loaded as a standalone file (tools/misc/make_demo_data.py without the package)
    import importlib.util
    _spec = importlib.util.spec_from_file_location('qv_demo_shapes', osp.join(osp.dirname(__file__),
                                                                              'demo_shapes.py'))
    demo_shapes = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(demo_shapes)

GENERATOR_VERSION = 3  # 3: colours option, default 'random' (category-independent); 2 had per-category hues only
MARKER_NAME = '.complete'
SPLITS = ('train', 'val')
LABEL_FILE = 'annotations/category_name_demo_v3det.txt'
TREE_FILE = 'annotations/demo_v3det_category_tree.json'
ANN_FILES = dict(train='annotations/demo_v3det_train.json', val='annotations/demo_v3det_val.json')
#: ``colours`` modes of :func:`generate_demo_v3det` (see the module docstring).
COLOUR_MODES = ('random', 'hue')

#: Raw class names in category-id order (ids 1..14), V3Det style.
DEMO_V3DET_CLASSES = (
    'circle', 'ellipse', 'ring', 'crescent', 'triangle', 'square', 'pentagon', 'hexagon', 'star (five-pointed)',
    'star (six-pointed)', 'cross', 'arrow', 'polygon', 'round shape')

# tree: node id -> (english name, category id or None, parents)
_NODES = {
    'n00000001': ('entity', None, ()),
    'n00000002': ('shape', None, ('n00000001', )),
    'n00000003': ('symbol', None, ('n00000001', )),
    'n00000010': ('polygon', 13, ('n00000002', )),
    'n00000011': ('round shape', 14, ('n00000002', )),
    'n00000020': ('circle', 1, ('n00000011', )),
    'n00000021': ('ellipse', 2, ('n00000011', )),
    'n00000022': ('ring', 3, ('n00000011', )),
    'n00000023': ('crescent', 4, ('n00000011', )),
    'n00000030': ('triangle', 5, ('n00000010', )),
    'n00000031': ('square', 6, ('n00000010', )),
    'n00000032': ('pentagon', 7, ('n00000010', )),
    'n00000033': ('hexagon', 8, ('n00000010', )),
    'n00000034': ('star', 9, ('n00000010', 'n00000003')),  # DAG: a star is a polygon and a symbol
    'n00000035': ('star', 10, ('n00000010', 'n00000003')),  # same English name, another category
    'n00000040': ('cross', 11, ('n00000003', )),
    'n00000041': ('arrow', 12, ('n00000003', )),
}
_DESC = {
    'n00000034': 'five-pointed star', 'n00000035': 'six-pointed star (hexagram)', 'n00000010': 'irregular polygon',
    'n00000011': 'rounded square'}


def clean_name(name: str) -> str:
    """The official CQ-DINO's name cleaning (drop "(...)", "_" -> " ", lower case): shown to collide here."""
    return re.sub(r'\s+', ' ', re.sub(r'\(.*?\)', '', name).replace('_', ' ')).strip().lower()


def category_tree() -> Dict[str, Any]:
    """The hierarchy in the official V3Det tree-JSON schema."""
    father2child: Dict[str, List[str]] = {}
    child2father: Dict[str, List[str]] = {}
    for node, (_, _, parents) in _NODES.items():
        for p in parents:
            father2child.setdefault(p, []).append(node)
            child2father.setdefault(node, []).append(p)

    def descendants(node: str) -> List[str]:
        out: List[str] = []
        for c in father2child.get(node, []):
            for d in [c] + descendants(c):
                if d not in out:
                    out.append(d)
        return out

    anc2desc = {n: descendants(n) for n in _NODES if father2child.get(n)}
    desc2anc: Dict[str, List[str]] = {}
    for a, ds in anc2desc.items():
        for d in ds:
            desc2anc.setdefault(d, []).append(a)
    return dict(
        categoryid2treeid={str(cat): node for node, (_, cat, _) in _NODES.items() if cat is not None},
        id2name={node: name for node, (name, _, _) in _NODES.items()},
        id2desc={node: _DESC.get(node, name) for node, (name, _, _) in _NODES.items()},
        father2child=father2child,
        child2father=child2father,
        ancestor2descendant=anc2desc,
        descendant2ancestor=desc2anc)


def _regular(cx, cy, r, n, angle, inner=None):
    pts = []
    for k in range(n):
        a = angle + 2 * math.pi * k / n
        pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        if inner is not None:
            a2 = a + math.pi / n
            pts.append((cx + inner * r * math.cos(a2), cy + inner * r * math.sin(a2)))
    return pts


def _rotate(pts, cx, cy, angle):
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in pts]


def _draw(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cls: str, cx: float, cy: float, side: float) -> None:
    r = side / 2
    rot = rng.uniform(0, 2 * math.pi)
    if cls == 'circle':
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif cls == 'ellipse':
        ratio = rng.uniform(0.4, 0.65)
        pts = [(cx + r * math.cos(t), cy + ratio * r * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48, False)]
        draw.polygon(_rotate(pts, cx, cy, rot), fill=255)
    elif cls == 'ring':
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ri = r * rng.uniform(0.45, 0.6)
        draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    elif cls == 'crescent':
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        off = r * rng.uniform(0.45, 0.6)
        ox, oy = cx + off * math.cos(rot), cy + off * math.sin(rot)
        draw.ellipse([ox - r, oy - r, ox + r, oy + r], fill=0)
    elif cls in ('triangle', 'square', 'pentagon', 'hexagon'):
        n = dict(triangle=3, square=4, pentagon=5, hexagon=6)[cls]
        draw.polygon(_regular(cx, cy, r, n, rot), fill=255)
    elif cls == 'star (five-pointed)':
        draw.polygon(_regular(cx, cy, r, 5, rot, inner=0.42), fill=255)
    elif cls == 'star (six-pointed)':
        draw.polygon(_regular(cx, cy, r, 6, rot, inner=0.577), fill=255)
    elif cls == 'cross':
        a, b = r, r * 0.33
        pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b),
               (-b, -b)]
        draw.polygon(_rotate([(cx + x, cy + y) for x, y in pts], cx, cy, rot), fill=255)
    elif cls == 'arrow':
        s, h = r * 0.25, r * 0.55
        pts = [(-r, -s), (r - h, -s), (r - h, -h), (r, 0), (r - h, h), (r - h, s), (-r, s)]
        draw.polygon(_rotate([(cx + x, cy + y) for x, y in pts], cx, cy, rot), fill=255)
    elif cls == 'polygon':  # irregular polygon
        n = int(rng.integers(5, 8))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = rng.uniform(0.45, 1.0, n) * r
        draw.polygon([(cx + q * math.cos(t), cy + q * math.sin(t)) for q, t in zip(radii, angles)], fill=255)
    elif cls == 'round shape':  # rounded square
        draw.rounded_rectangle([cx - r, cy - r, cx + r, cy + r], radius=r * 0.45, fill=255)
    else:
        raise ValueError(f'unknown demo V3Det class {cls!r}')


def class_colour(rng: np.random.Generator, cat_idx: int) -> np.ndarray:
    """``'hue'`` mode: RGB fill of a shape of category index ``cat_idx``: the category's hue +- 4 degrees, saturation
    0.65-1, value 0.55-1."""
    import colorsys
    hue = (cat_idx / len(DEMO_V3DET_CLASSES) + rng.uniform(-4, 4) / 360) % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.55, 1.0))) * 255


def random_colour(rng: np.random.Generator, cat_idx: int) -> np.ndarray:
    """``'random'`` mode (default): the same rule whatever the category (``cat_idx`` is ignored): hue uniform on the
    colour wheel, saturation 0.65-1, value 0.55-1 (the saturation/value ranges of ``'hue'`` mode)."""
    import colorsys
    del cat_idx
    return np.array(colorsys.hsv_to_rgb(rng.uniform(0.0, 1.0), rng.uniform(0.65, 1.0), rng.uniform(0.55, 1.0))) * 255


_COLOUR_FNS = dict(random=random_colour, hue=class_colour)


def shape_mask(rng: np.random.Generator, cls: str, width: int, height: int) -> Tuple[np.ndarray, float]:
    """One random shape of class ``cls``: clipped boolean mask and unclipped area (drawn on a padded canvas)."""
    side = rng.uniform(0.22, 0.5) * min(width, height)
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    pad = int(side) + 2
    canvas = Image.new('L', (width + 2 * pad, height + 2 * pad), 0)
    _draw(ImageDraw.Draw(canvas), rng, cls, cx + pad, cy + pad, side)
    full = np.asarray(canvas) > 0
    return full[pad:pad + height, pad:pad + width], float(full.sum())


def _params(num_train: int, num_val: int, size: int, seed: int, colours: str) -> Dict[str, Any]:
    return dict(generator_version=GENERATOR_VERSION, num_train=int(num_train), num_val=int(num_val),
                image_size=int(size), seed=int(seed), colours=colours, jpeg_quality=demo_shapes.JPEG_QUALITY)


def _categories() -> List[dict]:
    node_of = {cat: node for node, (_, cat, _) in _NODES.items() if cat is not None}
    return [dict(id=i + 1, name=name, name_zh='', cat_info=_DESC.get(node_of[i + 1], name), novel=False,
                 exemplar_image='') for i, name in enumerate(DEMO_V3DET_CLASSES)]


def generate_demo_v3det(out_dir: str, num_train: int = 240, num_val: int = 48, image_size: int = 160, seed: int = 0,
                        overwrite: bool = False, colours: str = 'random') -> Dict[str, str]:
    """Generate (or reuse, when ``out_dir/.complete`` matches the parameters, generator version and ``colours``
    included) the demo V3Det set. ``colours``: ``'random'`` (category-independent, default) or ``'hue'``
    (per-category hue), see the module docstring.

    Returns the paths: ``data_root``, ``label_file``, ``tree_file``, ``train``, ``val`` (absolute)."""
    if colours not in COLOUR_MODES:
        raise ValueError(f'colours must be one of {COLOUR_MODES}, got {colours!r}')
    for name, value in (('num_train', num_train), ('num_val', num_val)):
        if int(value) < 0:
            raise ValueError(f'{name} must be >= 0, got {value}')
    if int(image_size) < 64:
        raise ValueError(f'image_size must be at least 64, got {image_size}')
    params = _params(num_train, num_val, image_size, seed, colours)
    paths = dict(data_root=out_dir, label_file=osp.join(out_dir, LABEL_FILE), tree_file=osp.join(out_dir, TREE_FILE),
                 train=osp.join(out_dir, ANN_FILES['train']), val=osp.join(out_dir, ANN_FILES['val']))
    marker = osp.join(out_dir, MARKER_NAME)
    if not overwrite and demo_shapes._read_marker(marker) == params and all(
            osp.isfile(paths[k]) for k in ('label_file', 'tree_file', 'train', 'val')):
        return paths
    if osp.exists(marker):
        os.remove(marker)
    shutil.rmtree(osp.join(out_dir, 'images'), ignore_errors=True)
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)

    with open(paths['label_file'], 'w', encoding='utf-8') as f:
        f.write('\n'.join(DEMO_V3DET_CLASSES) + '\n')
    demo_shapes._dump_json(category_tree(), paths['tree_file'])
    node_of = {cat: node for node, (_, cat, _) in _NODES.items() if cat is not None}
    img_id = ann_id = 0
    counts = dict(train=int(num_train), val=int(num_val))
    for split_idx, split in enumerate(SPLITS):
        images, annotations = [], []
        for idx in range(counts[split]):
            rng = np.random.default_rng([int(seed), 100 + split_idx, idx])
            w = int(round(rng.uniform(0.85, 1.0) * image_size))
            h = int(round(rng.uniform(0.85, 1.0) * image_size))
            pixels, objects = demo_shapes.render_image(rng, w, h, DEMO_V3DET_CLASSES, shape_mask, max_shapes=4,
                                                       colour=_COLOUR_FNS[colours])
            img_id += 1
            folder = node_of[objects[0][0]] if objects else 'n00000001'
            file_name = f'images/{folder}/{split}_{img_id:06d}.jpg'
            os.makedirs(osp.join(out_dir, 'images', folder), exist_ok=True)
            Image.fromarray(pixels, 'RGB').save(osp.join(out_dir, file_name), quality=demo_shapes.JPEG_QUALITY)
            images.append(dict(id=img_id, file_name=file_name, width=w, height=h))
            for cat_id, box, area in objects:
                ann_id += 1
                annotations.append(dict(id=ann_id, image_id=img_id, category_id=cat_id, bbox=box, area=area,
                                        iscrowd=0))
        demo_shapes._dump_json(
            dict(info=dict(description=f'queryvision_mm demo V3Det ({split})', version=str(GENERATOR_VERSION)),
                 licenses=[], images=images, annotations=annotations, categories=_categories()), paths[split])
    demo_shapes._dump_json(params, marker)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description='Generate the mini V3Det-format demo set (CQ-DINO demo).')
    parser.add_argument('--out-dir', default='data/demo_v3det')
    parser.add_argument('--num-train', type=int, default=240)
    parser.add_argument('--num-val', type=int, default=48)
    parser.add_argument('--size', type=int, default=160, help='nominal square image size')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--colours', choices=COLOUR_MODES, default='random',
                        help="shape colours: 'random' (same rule for every category: shape is the only cue; default) "
                             "or 'hue' (each category its own hue: a colour shortcut)")
    parser.add_argument('--overwrite', action='store_true')
    args = parser.parse_args(argv)
    try:
        paths = generate_demo_v3det(args.out_dir, args.num_train, args.num_val, args.size, args.seed, args.overwrite,
                                    colours=args.colours)
    except ValueError as e:
        print(f'error: {e}')
        return 1
    print(f"demo V3Det dataset ready in {paths['data_root']}: {len(DEMO_V3DET_CLASSES)} classes, "
          f"colours {args.colours!r}, tree {paths['tree_file']}")
    for key in SPLITS:
        with open(paths[key], encoding='utf-8') as f:
            coco = json.load(f)
        print(f"  {key:<6} {len(coco['images']):5d} images {len(coco['annotations']):6d} boxes  {paths[key]}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
