#!/usr/bin/env python3
"""Create COCO-Partial splits for semi-supervised object detection.

For every fold ``f`` in ``1..--fold`` and every labeled percentage ``p`` this writes two files into
``--out-dir`` (named like mmdet's semi-supervised configs expect them)::

    {stem}.{f}@{p}.json            # the labeled images and their annotations
    {stem}.{f}@{p}-unlabeled.json  # all remaining images (annotations kept, for analysis only)

where ``stem`` is the annotation file's name without ``.json`` (``instances_train2017`` by default), e.g.
``instances_train2017.1@10.json``. Fold ``f`` uses ``seed = f + --seed-offset``; both outputs keep the images in
their original order and ``categories``, ``info`` and ``licenses`` (when present) are copied to both.

``--mode`` picks the sampling (default ``published``):

* ``published``: the algorithm of SoftTeacher's ``tools/dataset/semi_coco.py`` (microsoft/SoftTeacher, run by its
  ``prepare_coco_data.sh conduct`` for percent 1/5/10 and folds 1..5; Semi-DETR's README uses the same script),
  the folds the published COCO-Partial numbers of SoftTeacher / Semi-DETR / Sparse Semi-DETR come from:
  numpy's legacy global generator seeded with ``fold + seed_offset`` (``RandomState``, MT19937), ``k =
  int(p / 100.0 * N)`` distinct indices = the first ``k`` of ``permutation(N)`` (what the legacy
  ``choice(range(N), size=k, replace=False)`` draws), the labeled annotations are those of the labeled images and
  every other annotation goes to the unlabeled file, ``p`` is written as ``int(p)`` and the JSON as
  ``json.dump`` writes it (key order images, annotations, licenses, categories, info), so the files are
  byte-identical to that script's for the same seed. Caveat: ``prepare_coco_data.sh`` passes ``--seed-offset
  $RANDOM`` (one draw per run, not recorded), so the authors' exact folds need their offset (Semi-DETR publishes
  its split files); with the default offset 0 this gives the same algorithm's folds 1..5.
* ``stac``: STAC's ``prepare_datasets/prepare_coco_data.py`` (google-research/ssl_detection, which SoftTeacher
  says it follows): legacy generator seeded with the fold, ``int(p / 100.0 * N)`` indices drawn *with*
  replacement (so slightly fewer distinct labeled images, as mmdet's ``tools/misc/split_coco.py``), other
  details as ``published``.
* ``ours`` (the default before issue 13): ``numpy.random.default_rng(seed)``, exactly ``k = max(1, round(p / 100 *
  N))`` distinct images (``rng.choice(N, k, replace=False)``), annotations of unknown images dropped, compact JSON
  and ``p`` without a trailing ``.0`` (``0.5`` -> ``0.5``; fractional percentages keep distinct names).

Example::

    python tools/dataset_converters/split_coco.py --data-root data/coco/ \
        --labeled-percent 1 5 10 --fold 5 [--mode published|stac|ours] [--seed-offset N] [--progress|--no-progress]

Progress: a tqdm bar on stderr counts the files written (two per split; with COCO train2017 every unlabeled file is
~400 MB of JSON, so the 5 folds x 4 percentages take minutes); the per-split summary lines stay on stdout. By default
it is shown only when stderr is a terminal (tqdm's ``disable=None``), so batch-job logs stay clean; ``--progress``
forces it, ``--no-progress`` turns it off.

Only the standard library, numpy and tqdm (the progress bar) are used, so this runs without torch/mmcv/mmdet.
"""
import argparse
import json
import math
import os
import os.path as osp
import sys
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

CocoDict = Dict[str, Any]

#: Top-level keys copied verbatim (when present) into both outputs of a split.
COPIED_KEYS = ('info', 'licenses', 'categories')
#: Sampling modes (see the module docstring); ``published`` = SoftTeacher's semi_coco.py.
MODES = ('published', 'stac', 'ours')


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


def split_names(stem: str, fold: int, percent: float, mode: str = 'published') -> Tuple[str, str]:
    """File names (labeled, unlabeled) of one split, e.g. ``('instances_train2017.1@10.json', ...)``; the
    ``published`` and ``stac`` modes write ``int(percent)`` as their scripts do (``0.5`` -> ``@0``)."""
    tag = format_percent(percent) if mode == 'ours' else str(int(float(percent)))
    base = f'{stem}.{fold}@{tag}'
    return f'{base}.json', f'{base}-unlabeled.json'


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    return mode


def labeled_indices(num_images: int, percent: float, seed: int, mode: str = 'published') -> np.ndarray:
    """Indices (into ``images``) of the labeled images of one split; see the module docstring for each mode."""
    percent = check_percent(percent)
    if check_mode(mode) == 'ours':
        return np.random.default_rng(seed).choice(num_images, num_labeled(num_images, percent), replace=False)
    k = int(percent / 100.0 * num_images)  # the reference scripts' expression (same float rounding)
    if k == 0:
        raise ValueError(f'{percent}% of {num_images} images is int({percent / 100.0 * num_images}) = 0 images in '
                         f'mode {mode!r}; use a larger percentage or --mode ours')
    rs = np.random.RandomState(seed)  # the legacy global generator after np.random.seed(seed)
    if mode == 'published':
        return rs.permutation(num_images)[:k]  # legacy choice(..., replace=False) without p
    return rs.randint(0, num_images, size=k)  # stac: legacy choice(...) with replacement, without p


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
               source: str = '<coco dict>',
               mode: str = 'published') -> Tuple[CocoDict, CocoDict]:
    """Split a COCO annotation dict into a labeled and an unlabeled part.

    Args:
        coco_dict: A loaded COCO annotation dict (needs ``images``; ``annotations`` may be absent).
        percent: Percentage of images to label, in ``(0, 100]``.
        seed: Seed of the split (``fold + seed_offset``).
        source: Name used in error messages (e.g. the file the dict was loaded from).
        mode: ``'published'`` (SoftTeacher's semi_coco.py), ``'stac'`` or ``'ours'``; see the module docstring.

    Returns:
        ``(labeled, unlabeled)`` COCO dicts. Images keep their original order; the labeled part gets the
        annotations of its images, the unlabeled part those of its images (``ours``) or every other annotation
        (``published``/``stac``, as their scripts); ``info``/``licenses``/``categories`` are copied (shared
        references, not deep copies) when present.

    Raises:
        ValueError: ``percent`` outside ``(0, 100]``, an unknown ``mode``, no labeled image (``published``/
            ``stac`` with ``int(p / 100 * N) == 0``), or the dict lacks/has malformed ``images``.
    """
    percent = check_percent(percent)
    check_mode(mode)
    _validate(coco_dict, source)
    images: List[dict] = coco_dict['images']
    annotations: List[dict] = coco_dict.get('annotations', [])

    num_images = len(images)
    chosen = labeled_indices(num_images, percent, seed, mode)
    is_labeled = np.zeros(num_images, dtype=bool)
    is_labeled[chosen] = True

    labeled_images = [img for img, lab in zip(images, is_labeled) if lab]
    unlabeled_images = [img for img, lab in zip(images, is_labeled) if not lab]
    labeled_ids = {img['id'] for img in labeled_images}
    unlabeled_ids = {img['id'] for img in unlabeled_images}
    labeled_anns = [ann for ann in annotations if ann.get('image_id') in labeled_ids]
    if mode == 'ours':
        unlabeled_anns = [ann for ann in annotations if ann.get('image_id') in unlabeled_ids]
    else:
        unlabeled_anns = [ann for ann in annotations if ann.get('image_id') not in labeled_ids]

    def build(split_images: List[dict], split_anns: List[dict]) -> CocoDict:
        if mode != 'ours':  # the reference scripts' key order (json.dump keeps it)
            out = dict(images=split_images, annotations=split_anns)
            out.update({key: coco_dict[key] for key in ('licenses', 'categories', 'info') if key in coco_dict})
            return out
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


def _dump_json(obj: Any, path: str, compact: bool = True) -> None:
    """Write ``obj`` to ``path`` (compactly, or as plain ``json.dump``) via a temporary file (no half-written
    outputs)."""
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(obj, f, separators=(',', ':') if compact else None)
    os.replace(tmp, path)


def split_coco_file(ann_file: str,
                    out_dir: str,
                    percents: Iterable[float] = (1, 2, 5, 10),
                    folds: int = 5,
                    seed_offset: int = 0,
                    verbose: bool = True,
                    mode: str = 'published',
                    progress: Optional[bool] = None) -> List[Tuple[str, str]]:
    """Write all COCO-Partial splits of ``ann_file`` into ``out_dir``.

    Folds are numbered ``1..folds``; fold ``f`` uses ``seed = f + seed_offset`` for every percentage; ``mode``: see
    the module docstring. ``progress``: a bar of the files written on stderr: True, False, or None (default: only
    when stderr is a terminal).

    Returns:
        ``(labeled_path, unlabeled_path)`` for every written split, in fold-major order.

    Raises:
        FileNotFoundError: ``ann_file`` does not exist.
        ValueError: a percentage outside ``(0, 100]``, ``folds < 1`` or a malformed annotation file.
    """
    percents = [check_percent(p) for p in percents]  # validate before loading a large file
    check_mode(mode)
    if not percents:
        raise ValueError('at least one labeled percent is required')
    if folds < 1:
        raise ValueError(f'fold must be >= 1, got {folds}')
    stem = osp.splitext(osp.basename(ann_file))[0]
    names = [split_names(stem, 1, p, mode)[0] for p in percents]
    if len(set(names)) != len(names):
        raise ValueError(f'labeled percents {percents} give the same file names in mode {mode!r} ({names}); '
                         'that mode writes int(percent)')
    coco = load_coco(ann_file)
    os.makedirs(out_dir, exist_ok=True)

    written = []
    with tqdm(total=2 * folds * len(percents), desc='split_coco', unit=' files',
              disable=None if progress is None else not progress) as bar:
        for fold in range(1, folds + 1):
            seed = fold + seed_offset
            for percent in percents:
                labeled, unlabeled = split_coco(coco, percent, seed, source=ann_file, mode=mode)
                lab_name, unlab_name = split_names(stem, fold, percent, mode)
                lab_path, unlab_path = osp.join(out_dir, lab_name), osp.join(out_dir, unlab_name)
                _dump_json(labeled, lab_path, compact=mode == 'ours')
                bar.update()
                _dump_json(unlabeled, unlab_path, compact=mode == 'ours')
                bar.update()
                written.append((lab_path, unlab_path))
                if verbose:  # tqdm.write: the summary goes to stdout without tearing the bar on stderr
                    tqdm.write(f'[{mode} | fold {fold} | {format_percent(percent)}% | seed {seed}] '
                               f"labeled: {len(labeled['images'])} images / {len(labeled['annotations'])} anns "
                               f"-> {lab_path}; unlabeled: {len(unlabeled['images'])} images / "
                               f"{len(unlabeled['annotations'])} anns -> {unlab_path}", file=sys.stdout)
    return written


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description='Split a COCO annotation file into labeled / unlabeled COCO-Partial splits '
        '(names like instances_train2017.1@10.json; seed = fold + seed-offset; --mode published reproduces '
        "SoftTeacher's semi_coco.py, the COCO-Partial folds of the published numbers).")
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
    parser.add_argument(
        '--mode',
        choices=MODES,
        default='published',
        help="published: SoftTeacher's semi_coco.py (legacy np.random.seed, choice without replacement, "
        "int(p) in names; the folds of the published numbers); stac: STAC's script (with replacement); ours: "
        'default_rng, exactly round(p/100*N) images (default: %(default)s)')
    parser.add_argument(
        '--progress',
        action=argparse.BooleanOptionalAction,
        default=None,
        help='progress bar of the files written, on stderr (default: only when stderr is a terminal, so batch '
        'logs stay clean)')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the process exit status (0 on success, 1 on error)."""
    args = parse_args(argv)
    ann_file = osp.join(args.data_root, args.ann_file)
    out_dir = args.out_dir if args.out_dir is not None else osp.join(args.data_root, 'semi_anns')
    try:
        split_coco_file(ann_file, out_dir, args.labeled_percent, args.fold, args.seed_offset, mode=args.mode,
                        progress=args.progress)
    except (FileNotFoundError, ValueError) as e:
        print(f'split_coco.py: error: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
