"""Deterministic synthetic COCO-format detection data ("demo shapes") for demos and tests.

Every image is a real JPEG file: a smooth random background (a two-colour linear gradient plus
low-frequency colour blobs and a little pixel noise) with 1-5 filled shapes of three classes,
``circle``, ``square`` and ``triangle`` (squares and equilateral triangles are randomly rotated).
Shape sizes are 12-45 % of the shorter image side; shapes may overlap mildly (at most ~20 % of
either shape) and may be clipped by the image border (at least 60 % of a shape stays inside).
Each annotation's ``bbox`` is the tight ``[x, y, w, h]`` box of the shape's *visible* pixels and
``area`` is their count, so boxes match what is drawn.

Layout written by :func:`generate_demo_shapes`::

    out_dir/
      images/labeled/000001.jpg ...     # file_name in the JSON is relative to out_dir/images/
      images/unlabeled/000041.jpg ...
      images/val/000201.jpg ...
      annotations/instances_labeled.json
      annotations/instances_unlabeled.json   # true boxes kept for analysis only: semi-supervised
                                             # training must not read them
      annotations/instances_val.json
      annotations/instances_train_full.json  # labeled + unlabeled, for a fully-supervised oracle
      .complete                               # parameters of the finished run (idempotency marker)

Image and annotation ids are unique across all splits. Every image is drawn from its own
``numpy.random.default_rng([seed, split_index, image_index])`` stream, so the same ``seed`` yields
byte-identical JSON files and pixel-identical images, and changing one split's count does not
change the images of the other splits.

This module only needs numpy and Pillow (no torch/mmcv/mmdet) and can be imported standalone or
run as a script (``python -m queryvision_mm.testing.demo_data.demo_shapes --out-dir data/demo_shapes``).
"""
import argparse
import json
import math
import os
import os.path as osp
import shutil
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

#: Class names, in category-id order (ids 1, 2, 3).
DEMO_CLASSES = ('circle', 'square', 'triangle')

#: Bump when the rendering changes, so that stale ``.complete`` markers trigger a regeneration.
GENERATOR_VERSION = 1

SPLITS = ('labeled', 'unlabeled', 'val')
MARKER_NAME = '.complete'
JPEG_QUALITY = 92

# Shape placement parameters.
_MIN_SHAPES, _MAX_SHAPES = 1, 5
_MIN_REL_SIZE, _MAX_REL_SIZE = 0.12, 0.45
_MAX_OVERLAP = 0.2  # max fraction of either shape hidden by a new shape
_MIN_INSIDE = 0.6  # min fraction of a shape's full area inside the image
_MIN_BOX_SIDE = 4  # px
_MAX_TRIES = 30  # placement attempts per shape
_MIN_COLOUR_DIST = 90.0  # min RGB distance between a shape's colour and the background under it


def _as_size(image_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    """Normalise ``image_size`` (int or ``(width, height)``) to a ``(width, height)`` tuple."""
    if isinstance(image_size, (int, np.integer)):
        w = h = int(image_size)
    else:
        if len(image_size) != 2:
            raise ValueError(f'image_size must be an int or (width, height), got {image_size!r}')
        w, h = (int(v) for v in image_size)
    if w < 32 or h < 32:
        raise ValueError(f'image_size must be at least 32x32, got {w}x{h}')
    return w, h


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Random smooth textured background, float32 ``(H, W, 3)`` in ``[0, 255]``."""
    c0, c1 = rng.uniform(20, 235, size=(2, 3))
    theta = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    proj = xs * math.cos(theta) + ys * math.sin(theta)
    t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]

    # Low-frequency colour blobs: a coarse random grid upsampled bilinearly (deterministic in PIL).
    grid = rng.integers(0, 256, size=(int(rng.integers(3, 7)), int(rng.integers(3, 7)), 3), dtype=np.uint8)
    blobs = np.asarray(Image.fromarray(grid, 'RGB').resize((width, height), Image.BILINEAR), np.float32)
    img = 0.75 * img + 0.25 * blobs
    img += rng.normal(0.0, 6.0, size=img.shape)
    return np.clip(img, 0, 255).astype(np.float32)


def _shape_mask(rng: np.random.Generator, cls: str, width: int, height: int) -> Tuple[np.ndarray, float]:
    """Draw one random shape of class ``cls``; return its clipped boolean mask and unclipped area."""
    side = rng.uniform(_MIN_REL_SIZE, _MAX_REL_SIZE) * min(width, height)
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    canvas = Image.new('L', (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if cls == 'circle':
        r = side / 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        full_area = math.pi * r * r
    elif cls == 'square':
        angle = rng.uniform(0, math.pi / 2)
        half_diag = side / math.sqrt(2)
        pts = [(cx + half_diag * math.cos(angle + k * math.pi / 2), cy + half_diag * math.sin(angle + k * math.pi / 2))
               for k in range(4)]
        draw.polygon(pts, fill=255)
        full_area = side * side
    elif cls == 'triangle':
        angle = rng.uniform(0, 2 * math.pi / 3)
        circum_r = side / math.sqrt(3)  # equilateral triangle with edge length `side`
        pts = [(cx + circum_r * math.cos(angle + k * 2 * math.pi / 3),
                cy + circum_r * math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
        draw.polygon(pts, fill=255)
        full_area = math.sqrt(3) / 4 * side * side
    else:
        raise ValueError(f'unknown shape class {cls!r}')
    return np.asarray(canvas) > 0, full_area


def _tight_box(mask: np.ndarray) -> Optional[List[int]]:
    """Tight ``[x, y, w, h]`` box (pixel units, inclusive of edge pixels) of a boolean mask, or None."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def render_image(rng: np.random.Generator,
                 width: int,
                 height: int,
                 classes: Sequence[str] = DEMO_CLASSES,
                 shape_mask: Callable[[np.random.Generator, str, int, int], Tuple[np.ndarray, float]] = None,
                 max_shapes: int = _MAX_SHAPES,
                 colour: Callable[[np.random.Generator, int], np.ndarray] = None
                 ) -> Tuple[np.ndarray, List[Tuple[int, List[int], int]]]:
    """Render one random image with 1..``max_shapes`` shapes of ``classes`` (category id = index + 1), drawn by
    ``shape_mask(rng, class_name, width, height) -> (clipped mask, unclipped area)`` (default: this module's three
    shapes), filled with ``colour(rng, class_index)`` (default: a uniformly random RGB colour; redrawn up to 10 times
    when too close to the background under the shape). Other generators (``demo_v3det``) reuse the placement rules
    with their own shapes and colours.

    Returns:
        ``(image, objects)``: a uint8 ``(H, W, 3)`` RGB array and, per visible shape,
        ``(category_id, [x, y, w, h], area)`` with the tight box and pixel count of its visible part.
    """
    img = _background(rng, width, height)
    labels = np.zeros((height, width), dtype=np.int32)  # 0 = background, k = k-th placed shape
    placed: List[int] = []
    shape_mask = shape_mask or _shape_mask
    draw_colour = colour or (lambda r, _idx: r.uniform(0, 255, size=3))
    num_shapes = int(rng.integers(_MIN_SHAPES, max_shapes + 1))
    for _ in range(num_shapes):
        cat_idx = int(rng.integers(len(classes)))
        for _try in range(_MAX_TRIES):
            mask, full_area = shape_mask(rng, classes[cat_idx], width, height)
            area = int(mask.sum())
            if area < _MIN_INSIDE * full_area:
                continue
            box = _tight_box(mask)
            if box is None or min(box[2], box[3]) < _MIN_BOX_SIDE:
                continue
            covered = labels[mask]
            covered = covered[covered > 0]
            if covered.size > _MAX_OVERLAP * area:
                continue
            hidden_ok = all(n <= _MAX_OVERLAP * int((labels == k).sum())
                            for k, n in zip(*np.unique(covered, return_counts=True)))
            if not hidden_ok:
                continue
            under = img[mask].mean(axis=0)
            fill = draw_colour(rng, cat_idx)
            for _c in range(10):
                if np.linalg.norm(fill - under) >= _MIN_COLOUR_DIST:
                    break
                fill = draw_colour(rng, cat_idx)
            else:
                fill = np.where(under > 127, 20.0, 235.0)  # guaranteed contrast
            shading = rng.normal(0.0, 4.0, size=(area, 3))
            img[mask] = np.clip(fill[None, :] + shading, 0, 255)
            placed.append(cat_idx + 1)
            labels[mask] = len(placed)
            break

    objects = []
    for k, cat_id in enumerate(placed, start=1):
        visible = labels == k
        box = _tight_box(visible)
        if box is None:  # cannot happen with _MAX_OVERLAP < 1, kept for safety
            continue
        objects.append((cat_id, box, int(visible.sum())))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objects


def _params(num_labeled: int, num_unlabeled: int, num_val: int, size: Tuple[int, int], seed: int) -> Dict[str, Any]:
    return dict(
        generator_version=GENERATOR_VERSION,
        num_labeled=int(num_labeled),
        num_unlabeled=int(num_unlabeled),
        num_val=int(num_val),
        image_size=[int(size[0]), int(size[1])],
        seed=int(seed),
        jpeg_quality=JPEG_QUALITY)


def _paths(out_dir: str) -> Dict[str, str]:
    ann_dir = osp.join(out_dir, 'annotations')
    return dict(
        data_root=out_dir,
        img_dir=osp.join(out_dir, 'images'),
        labeled=osp.join(ann_dir, 'instances_labeled.json'),
        unlabeled=osp.join(ann_dir, 'instances_unlabeled.json'),
        val=osp.join(ann_dir, 'instances_val.json'),
        train_full=osp.join(ann_dir, 'instances_train_full.json'),
        marker=osp.join(out_dir, MARKER_NAME))


def _read_marker(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _dump_json(obj: Any, path: str) -> None:
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(obj, f, separators=(',', ':'))
        f.write('\n')
    os.replace(tmp, path)


def _coco(images: List[dict], annotations: List[dict], description: str) -> Dict[str, Any]:
    return dict(
        info=dict(description=description, version=str(GENERATOR_VERSION), contributor='queryvision_mm'),
        licenses=[],
        images=images,
        annotations=annotations,
        categories=[dict(id=i + 1, name=name, supercategory='shape') for i, name in enumerate(DEMO_CLASSES)])


def generate_demo_shapes(out_dir: str,
                         num_labeled: int = 40,
                         num_unlabeled: int = 160,
                         num_val: int = 40,
                         image_size: Union[int, Sequence[int]] = (160, 160),
                         seed: int = 0,
                         overwrite: bool = False) -> Dict[str, str]:
    """Generate (or reuse) the synthetic demo-shapes dataset in ``out_dir``.

    Args:
        out_dir: Output directory (created if missing).
        num_labeled: Number of labeled training images.
        num_unlabeled: Number of unlabeled training images (their true boxes are still written,
            to ``instances_unlabeled.json``, for analysis only).
        num_val: Number of validation images.
        image_size: Nominal ``(width, height)`` or an int for a square size; each image's width and
            height are drawn independently in ``[0.85, 1.0]`` times the nominal size.
        seed: Random seed; equal seeds give byte-identical JSON and pixel-identical images.
        overwrite: Regenerate even if ``out_dir/.complete`` matches the parameters.

    Returns:
        Paths: ``data_root`` (``out_dir``), ``img_dir`` (``out_dir/images``, the prefix of every
        ``file_name``), the annotation files ``labeled``, ``unlabeled``, ``val``, ``train_full``, and
        ``marker``.

    If the marker matches the parameters (and ``overwrite`` is False) nothing is written. Otherwise
    the generator's own outputs (``images/{labeled,unlabeled,val}``, the four annotation files and
    the marker) are removed and rewritten; other files in ``out_dir`` are left alone.
    """
    for name, value in (('num_labeled', num_labeled), ('num_unlabeled', num_unlabeled), ('num_val', num_val)):
        if int(value) < 0:
            raise ValueError(f'{name} must be >= 0, got {value}')
    width, height = _as_size(image_size)
    params = _params(num_labeled, num_unlabeled, num_val, (width, height), seed)
    paths = _paths(out_dir)

    if not overwrite and _read_marker(paths['marker']) == params and all(
            osp.isfile(paths[k]) for k in ('labeled', 'unlabeled', 'val', 'train_full')):
        return paths

    # Remove a stale marker first, so an interrupted run is never mistaken for a complete one.
    if osp.exists(paths['marker']):
        os.remove(paths['marker'])
    for split in SPLITS:
        shutil.rmtree(osp.join(paths['img_dir'], split), ignore_errors=True)
        os.makedirs(osp.join(paths['img_dir'], split))
    os.makedirs(osp.dirname(paths['labeled']), exist_ok=True)

    counts = dict(labeled=int(num_labeled), unlabeled=int(num_unlabeled), val=int(num_val))
    per_split: Dict[str, Tuple[List[dict], List[dict]]] = {}
    img_id = ann_id = 0
    for split_idx, split in enumerate(SPLITS):
        images: List[dict] = []
        annotations: List[dict] = []
        for idx in range(counts[split]):
            rng = np.random.default_rng([int(seed), split_idx, idx])
            w = int(round(rng.uniform(0.85, 1.0) * width))
            h = int(round(rng.uniform(0.85, 1.0) * height))
            pixels, objects = render_image(rng, w, h)
            img_id += 1
            file_name = f'{split}/{img_id:06d}.jpg'
            Image.fromarray(pixels, 'RGB').save(osp.join(paths['img_dir'], file_name), quality=JPEG_QUALITY)
            images.append(dict(id=img_id, file_name=file_name, width=w, height=h))
            for cat_id, box, area in objects:
                ann_id += 1
                annotations.append(
                    dict(id=ann_id, image_id=img_id, category_id=cat_id, bbox=box, area=area, iscrowd=0))
        per_split[split] = (images, annotations)

    for split in SPLITS:
        _dump_json(_coco(*per_split[split], f'queryvision_mm demo shapes ({split})'), paths[split])
    full_images = per_split['labeled'][0] + per_split['unlabeled'][0]
    full_anns = per_split['labeled'][1] + per_split['unlabeled'][1]
    _dump_json(_coco(full_images, full_anns, 'queryvision_mm demo shapes (labeled + unlabeled)'), paths['train_full'])
    _dump_json(params, paths['marker'])
    return paths


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line of :func:`main`."""
    parser = argparse.ArgumentParser(description='Generate the synthetic demo-shapes COCO dataset.')
    parser.add_argument('--out-dir', default='data/demo_shapes', help='output directory (default: %(default)s)')
    parser.add_argument('--num-labeled', type=int, default=40, help='labeled training images (default: 40)')
    parser.add_argument('--num-unlabeled', type=int, default=160, help='unlabeled training images (default: 160)')
    parser.add_argument('--num-val', type=int, default=40, help='validation images (default: 40)')
    parser.add_argument(
        '--size', type=int, nargs='+', default=[160, 160], help='nominal image size: S or W H (default: 160 160)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default: 0)')
    parser.add_argument('--overwrite', action='store_true', help='regenerate even if the data is up to date')
    args = parser.parse_args(argv)
    if len(args.size) not in (1, 2):
        parser.error('--size takes one value (square) or two values (width height)')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point: generate the dataset and print where it is."""
    args = parse_args(argv)
    size = args.size[0] if len(args.size) == 1 else tuple(args.size)
    try:
        paths = generate_demo_shapes(args.out_dir, args.num_labeled, args.num_unlabeled, args.num_val, size, args.seed,
                                     args.overwrite)
    except ValueError as e:
        print(f'error: {e}')
        return 1
    print(f"demo shapes dataset ready in {paths['data_root']} (images under {paths['img_dir']})")
    for key in ('labeled', 'unlabeled', 'val', 'train_full'):
        with open(paths[key], encoding='utf-8') as f:
            coco = json.load(f)
        print(f"  {key:<10} {len(coco['images']):5d} images {len(coco['annotations']):6d} boxes  {paths[key]}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
