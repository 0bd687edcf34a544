#!/usr/bin/env python3
"""Create COCO-Partial splits for semi-supervised object detection.

For every fold ``f`` in ``1..--fold`` and every labeled percentage ``p`` this writes two files into
``--out-dir`` (named like mmdet's semi-supervised configs expect them)::

    {stem}.{f}@{p}.json            # the labeled images and their annotations
    {stem}.{f}@{p}-unlabeled.json  # all remaining images (annotations kept, for analysis only)

where ``stem`` is the annotation file's name without ``.json`` (``instances_train2017`` by default) and
``p`` is printed without a trailing ``.0`` (``10`` -> ``10``, ``0.5`` -> ``0.5``), e.g.
``instances_train2017.1@10.json``.

Sampling (differs on purpose from ``mmdet/tools/misc/split_coco.py``, which samples *with* replacement
and therefore labels slightly fewer images than requested):

* ``seed = fold + seed_offset`` and ``rng = numpy.random.default_rng(seed)``;
* exactly ``k = max(1, round(p / 100 * N))`` distinct image indices are drawn with
  ``rng.choice(N, k, replace=False)`` (Python's ``round``, i.e. round-half-to-even);
* both outputs keep the images in their original order; annotations follow their image.
  ``categories``, ``info`` and ``licenses`` (when present) are copied to both outputs.

Given the same input file, numpy's PCG64 stream makes the splits reproducible across machines.

Example::

    python tools/dataset_converters/split_coco.py --data-root data/coco/ \
        --labeled-percent 1 5 10 --fold 5

Only the standard library and numpy are used, so this runs without torch/mmcv/mmdet.
"""
import argparse
import json
import math
import os
import os.path as osp
import sys
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

CocoDict = Dict[str, Any]

#: Top-level keys copied verbatim (when present) into both outputs of a split.
COPIED_KEYS = ('info', 'licenses', 'categories')


def format_percent(percent: float) -> str:
    """Format a percentage for file names: integers without ``.0`` (``10.0`` -> ``'10'``, ``0.5`` -> ``'0.5'``)."""
    value = float(percent)
    if value.is_integer():
        return str(int(value))
    return repr(value)


def check_percent(percent: float) -> float:
    """Return ``percent`` as a float, raising ``ValueError`` unless ``0 < percent <= 100``."""
    try:
        value = float(percent)
    except (TypeError, ValueError):
        raise ValueError(f'labeled percent must be a number in (0, 100], got {percent!r}') from None
    if not math.isfinite(value) or not 0 < value <= 100:
        raise ValueError(f'labeled percent must be in (0, 100], got {percent!r}')
    return value


def num_labeled(num_images: int, percent: float) -> int:
    """Number of labeled images for ``percent`` of ``num_images``: ``max(1, round(percent / 100 * N))``."""
    return min(num_images, max(1, round(check_percent(percent) / 100.0 * num_images)))


def split_names(stem: str, fold: int, percent: float) -> Tuple[str, str]:
    """File names (labeled, unlabeled) of one split, e.g. ``('instances_train2017.1@10.json', ...)``."""
    base = f'{stem}.{fold}@{format_percent(percent)}'
    return f'{base}.json', f'{base}-unlabeled.json'


def _validate(coco: CocoDict, source: str) -> None:
    """Check the fields ``split_coco`` relies on; raise ``ValueError`` naming ``source`` otherwise."""
    if not isinstance(coco, dict):
        raise ValueError(f'{source}: expected a JSON object (COCO annotation dict), got {type(coco).__name__}')
    if 'images' not in coco:
        raise ValueError(f"{source}: missing required field 'images'")
    if not isinstance(coco['images'], list):
        raise ValueError(f"{source}: field 'images' must be a list")
    if not isinstance(coco.get('annotations', []), list):
        raise ValueError(f"{source}: field 'annotations' must be a list")
    if not coco['images']:
        raise ValueError(f"{source}: field 'images' is empty, nothing to split")
    ids = [img.get('id') if isinstance(img, dict) else None for img in coco['images']]
    if any(i is None for i in ids):
        raise ValueError(f"{source}: every entry of 'images' needs an 'id'")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}: field 'images' contains duplicate image ids")


def split_coco(coco_dict: CocoDict,
               percent: float,
               seed: int,
               source: str = '<coco dict>') -> Tuple[CocoDict, CocoDict]:
    """Split a COCO annotation dict into a labeled and an unlabeled part.

    Args:
        coco_dict: A loaded COCO annotation dict (needs ``images``; ``annotations`` may be absent).
        percent: Percentage of images to label, in ``(0, 100]``.
        seed: Seed for ``numpy.random.default_rng``; exactly ``max(1, round(percent / 100 * N))``
            distinct images are drawn with ``rng.choice(N, k, replace=False)``.
        source: Name used in error messages (e.g. the file the dict was loaded from).

    Returns:
        ``(labeled, unlabeled)`` COCO dicts. Images keep their original order, every annotation goes
        with its image (annotations of unknown images are dropped), and ``info``/``licenses``/
        ``categories`` are copied (shared references, not deep copies) when present.

    Raises:
        ValueError: ``percent`` outside ``(0, 100]``, or the dict lacks/has malformed ``images``.
    """
    percent = check_percent(percent)
    _validate(coco_dict, source)
    images: List[dict] = coco_dict['images']
    annotations: List[dict] = coco_dict.get('annotations', [])

    num_images = len(images)
    k = num_labeled(num_images, percent)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(num_images, k, replace=False)
    is_labeled = np.zeros(num_images, dtype=bool)
    is_labeled[chosen] = True

    labeled_images = [img for img, lab in zip(images, is_labeled) if lab]
    unlabeled_images = [img for img, lab in zip(images, is_labeled) if not lab]
    labeled_ids = {img['id'] for img in labeled_images}
    unlabeled_ids = {img['id'] for img in unlabeled_images}
    labeled_anns = [ann for ann in annotations if ann.get('image_id') in labeled_ids]
    unlabeled_anns = [ann for ann in annotations if ann.get('image_id') in unlabeled_ids]

    def build(split_images: List[dict], split_anns: List[dict]) -> CocoDict:
        out: CocoDict = {key: coco_dict[key] for key in COPIED_KEYS if key in coco_dict}
        out['images'] = split_images
        out['annotations'] = split_anns
        return out

    return build(labeled_images, labeled_anns), build(unlabeled_images, unlabeled_anns)


def load_coco(ann_file: str) -> CocoDict:
    """Load a COCO annotation JSON file.

    Raises:
        FileNotFoundError: ``ann_file`` does not exist (the message names the path).
        ValueError: the file is not valid JSON or lacks ``images``.
    """
    if not osp.isfile(ann_file):
        raise FileNotFoundError(f'annotation file not found: {ann_file}')
    with open(ann_file, encoding='utf-8') as f:
        try:
            coco = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f'{ann_file}: not a valid JSON file ({e})') from None
    _validate(coco, ann_file)
    return coco


def _dump_json(obj: Any, path: str) -> None:
    """Write ``obj`` compactly to ``path`` via a temporary file (no half-written outputs)."""
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(obj, f, separators=(',', ':'))
    os.replace(tmp, path)


def split_coco_file(ann_file: str,
                    out_dir: str,
                    percents: Iterable[float] = (1, 2, 5, 10),
                    folds: int = 5,
                    seed_offset: int = 0,
                    verbose: bool = True) -> List[Tuple[str, str]]:
    """Write all COCO-Partial splits of ``ann_file`` into ``out_dir``.

    Folds are numbered ``1..folds``; fold ``f`` uses ``seed = f + seed_offset`` for every percentage.

    Returns:
        ``(labeled_path, unlabeled_path)`` for every written split, in fold-major order.

    Raises:
        FileNotFoundError: ``ann_file`` does not exist.
        ValueError: a percentage outside ``(0, 100]``, ``folds < 1`` or a malformed annotation file.
    """
    percents = [check_percent(p) for p in percents]  # validate before loading a large file
    if not percents:
        raise ValueError('at least one labeled percent is required')
    if folds < 1:
        raise ValueError(f'fold must be >= 1, got {folds}')
    coco = load_coco(ann_file)
    stem = osp.splitext(osp.basename(ann_file))[0]
    os.makedirs(out_dir, exist_ok=True)

    written = []
    for fold in range(1, folds + 1):
        seed = fold + seed_offset
        for percent in percents:
            labeled, unlabeled = split_coco(coco, percent, seed, source=ann_file)
            lab_name, unlab_name = split_names(stem, fold, percent)
            lab_path, unlab_path = osp.join(out_dir, lab_name), osp.join(out_dir, unlab_name)
            _dump_json(labeled, lab_path)
            _dump_json(unlabeled, unlab_path)
            written.append((lab_path, unlab_path))
            if verbose:
                print(f'[fold {fold} | {format_percent(percent)}% | seed {seed}] '
                      f"labeled: {len(labeled['images'])} images / {len(labeled['annotations'])} anns "
                      f"-> {lab_path}; unlabeled: {len(unlabeled['images'])} images / "
                      f"{len(unlabeled['annotations'])} anns -> {unlab_path}")
    return written


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description='Split a COCO annotation file into labeled / unlabeled COCO-Partial splits '
        '(names like instances_train2017.1@10.json; seed = fold + seed-offset, sampling without '
        'replacement with numpy.random.default_rng).')
    parser.add_argument('--data-root', default='./data/coco/', help='dataset root (default: %(default)s)')
    parser.add_argument(
        '--ann-file',
        default='annotations/instances_train2017.json',
        help='annotation file, relative to --data-root unless absolute (default: %(default)s)')
    parser.add_argument('--out-dir', default=None, help='output directory (default: <data-root>/semi_anns/)')
    parser.add_argument(
        '--labeled-percent',
        type=float,
        nargs='+',
        default=[1, 2, 5, 10],
        help='percentages of labeled images, each in (0, 100] (default: 1 2 5 10)')
    parser.add_argument('--fold', type=int, default=5, help='number of folds, numbered 1..fold (default: 5)')
    parser.add_argument('--seed-offset', type=int, default=0, help='seed = fold + seed-offset (default: 0)')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the process exit status (0 on success, 1 on error)."""
    args = parse_args(argv)
    ann_file = osp.join(args.data_root, args.ann_file)
    out_dir = args.out_dir if args.out_dir is not None else osp.join(args.data_root, 'semi_anns')
    try:
        split_coco_file(ann_file, out_dir, args.labeled_percent, args.fold, args.seed_offset)
    except (FileNotFoundError, ValueError) as e:
        print(f'split_coco.py: error: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
