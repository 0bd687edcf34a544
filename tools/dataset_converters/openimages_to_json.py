#!/usr/bin/env python
"""Open Images V4 (2018_04, human image-level labels) -> QKS zero-shot multi-label annotation files (OpenMMLab 2.0 JSON).

    python tools/dataset_converters/openimages_to_json.py ROOT OUT_DIR [--version 2018_04] [--val-fraction 0.01]
        [--seed 0] [--missing error|skip] [--progress | --no-progress]

ROOT holds (the layout the QKS/LESA/BiAM scripts use)::

    ROOT/2018_04/class-descriptions.csv          MID,name (no header; names may be quoted and hold commas)
    ROOT/2018_04/classes-trainable.txt           one MID per line: the seen labels
    ROOT/2018_04/unseen_labels.pkl               the 2,594 unseen MIDs (LESA); or unseen_labels.txt, one MID per line
    ROOT/2018_04/top_400_unseen.csv              indices into that list of the 400 most frequent (no header)
    ROOT/2018_04/{train,test}/{train,test}-annotations-human-imagelabels.csv   ImageID,Source,LabelName,Confidence
    ROOT/train/**/<ImageID>.jpg, ROOT/test/**/<ImageID>.jpg   the images (any sub-folder layout)

Labels (as the official script): seen = the names of the trainable MIDs sorted by name; unseen = the names of the
top-400 unseen MIDs sorted by name; classes = seen + unseen. MIDs sharing one name become one label (the official
lists are name-based but keep the duplicates: one entry per trainable MID, and only the last column of a duplicated name
ever gets a positive); the merge is recorded in ``metainfo.merged_mids`` (name -> MIDs), counted in the printed
statistics and warned about, because it lowers ``num_seen`` below the number of trainable MIDs: a config still
saying 7186 then stops with an error (``QVZSLConsistencyHook`` / the metric) instead of shifting the seen/unseen
boundary. Training images without a seen positive are kept in ``train.json`` (counted as
``train_without_positive``); the QKS configs drop them on load (``filter_cfg=dict(filter_empty_gt=True)``, as
the official loader). Confidence 1 is a positive, 0 an annotated negative (any other
value is an error naming the file and line); labels not annotated for an image are unknown (``negatives:
explicit``), and MIDs outside both lists are ignored. Training images carry seen labels only; test images seen and
unseen. Images whose positive and negative sets intersect are dropped (as official). A deterministic
``--val-fraction`` of the training images becomes ``val.json`` for model selection (never the test set).

The unseen-label pickle is read with a restricted unpickler (``queryvision_mm.utils.safe_pickle``) that only rebuilds
plain containers, strings, numbers and NumPy arrays; anything else in it is refused with an error (it never executes
arbitrary code).

Writes ``OUT_DIR/annotations/{train,val,test}.json``, ``OUT_DIR/labels_seen.txt``, ``OUT_DIR/labels_unseen.txt``
and, with ``--missing skip``, ``OUT_DIR/missing_images.txt`` (annotated images with no file under ROOT).

Progress (tqdm, on stderr so that the statistics JSON on stdout stays machine-readable): the two image-label CSVs
(the training one holds ~28 M rows) report the bytes read of the file (their row count is unknown without a
pre-pass), the image folders the files found. By default it is shown only when stderr is a terminal (tqdm's
``disable=None``), so batch-job logs stay clean; ``--progress`` forces it, ``--no-progress`` turns it off.
"""
import argparse
import csv
import io
import json
import os
import os.path as osp
import pickle
import sys

import numpy as np
from tqdm import tqdm

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from queryvision_mm.utils.safe_pickle import restricted_load  # noqa: E402  (numpy-only module)


def _require(path):
    if not osp.isfile(path):
        raise FileNotFoundError(f'Open Images file not found: {path}')
    return path


def read_unseen_mids(path):
    """The unseen MID list from LESA's ``unseen_labels.pkl`` (restricted unpickling) or a text file."""
    _require(path)
    if path.endswith('.pkl'):
        with open(path, 'rb') as f:
            try:
                obj = restricted_load(f)
            except (pickle.UnpicklingError, EOFError, ValueError) as e:
                raise ValueError(f'{path}: cannot read the unseen label list ({e})') from e
        mids = [m.decode() if isinstance(m, bytes) else m for m in np.asarray(obj, dtype=object).ravel().tolist()]
    else:
        with open(path, encoding='utf-8') as f:
            mids = [ln.strip() for ln in f if ln.strip()]
    bad = [m for m in mids if not isinstance(m, str) or not m.startswith('/')]
    if bad:
        raise ValueError(f'{path}: entries must be label ids like "/m/0abc", got {bad[0]!r}')
    return mids


def read_label_map(path):
    out = {}
    with open(_require(path), encoding='utf-8', newline='') as f:
        for i, row in enumerate(csv.reader(f)):
            if not row:
                continue
            if len(row) < 2 or not row[0].startswith('/'):
                raise ValueError(f'{path}: line {i + 1} must be "MID,name", got {row!r}')
            out[row[0].strip()] = ','.join(row[1:]).strip(' "')
    return out


def read_top_indices(path, n_unseen):
    idx = []
    with open(_require(path), encoding='utf-8', newline='') as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or not row[0].strip():
                continue
            try:
                k = int(float(row[0]))
            except ValueError:
                raise ValueError(f'{path}: line {i + 1}: {row[0]!r} is not an index') from None
            if not 0 <= k < n_unseen:
                raise ValueError(f'{path}: line {i + 1}: index {k} outside the {n_unseen} unseen labels')
            idx.append(k)
    return idx


def _names(mids, label_map, source):
    missing = [m for m in mids if m not in label_map]
    if missing:
        raise KeyError(f'{source}: {len(missing)} label ids have no name in class-descriptions.csv, '
                       f'e.g. {missing[0]}')
    by_name = {}
    for m in mids:
        by_name.setdefault(label_map[m], []).append(m)
    merged = {name: sorted(set(ms)) for name, ms in by_name.items() if len(set(ms)) > 1}
    return sorted(by_name), merged


def _progress_disable(progress):
    """tqdm's ``disable`` for ``progress`` = True (show), False (hide) or None (only when stderr is a terminal)."""
    return None if progress is None else not progress


class _CountingReader(io.RawIOBase):
    """A binary file that reports the bytes read through it to a progress bar (what the text layer above has
    fetched from the file: at most one buffer ahead of the parser)."""

    def __init__(self, raw, bar):
        self._raw, self._bar = raw, bar

    def readable(self):
        return True

    def close(self):
        if not self.closed:
            self._raw.close()
        super().close()

    def readinto(self, buf):
        n = self._raw.readinto(buf)
        if n:
            self._bar.update(n)
        return n


def open_csv_with_progress(path, desc, progress=None):
    """``(text file, bar)``: ``path`` opened as UTF-8 text with ``newline=''`` (as the csv module wants) whose reads
    advance a tqdm bar in bytes of the file's size (no pre-pass over a multi-GB file). Close both."""
    raw = open(_require(path), 'rb')
    bar = tqdm(total=osp.getsize(path), desc=desc, unit='B', unit_scale=True, unit_divisor=1024,
               disable=_progress_disable(progress), mininterval=0.5)
    text = io.TextIOWrapper(io.BufferedReader(_CountingReader(raw, bar), buffer_size=1 << 20), encoding='utf-8',
                            newline='')
    return text, bar


def read_image_labels(path, name_to_idx, label_map, progress=None):
    """ImageID -> (positive indices, negative indices), streaming the CSV; unknown MIDs are ignored. ``progress``:
    bytes-read bar (see :func:`open_csv_with_progress`)."""
    per_image = {}
    f, bar = open_csv_with_progress(path, osp.basename(path), progress)
    with f, bar:
        reader = csv.DictReader(f)
        need = {'ImageID', 'LabelName', 'Confidence'}
        if not need.issubset(reader.fieldnames or ()):
            raise ValueError(f'{path}: header must contain {sorted(need)}, got {reader.fieldnames}')
        for row in reader:
            entry = per_image.setdefault(row['ImageID'], (set(), set()))
            j = name_to_idx.get(label_map.get(row['LabelName']))
            if j is None:
                continue
            conf = row['Confidence'].strip()
            if conf in ('1', '1.0'):
                entry[0].add(j)
            elif conf in ('0', '0.0'):
                entry[1].add(j)
            else:
                raise ValueError(f'{path}: line {reader.line_num}: Confidence {conf!r} (expected 0 or 1)')
    return per_image


def index_images(root, progress=None):
    """ImageID -> path relative to ``root``'s parent folder, for every .jpg under ``root``; ``progress``: a count of
    the image files found (the total is unknown before the walk)."""
    found = {}
    base = osp.dirname(root.rstrip('/'))
    with tqdm(desc=f'images under {root}', unit=' files', disable=_progress_disable(progress),
              mininterval=0.5) as bar:
        for dirpath, _, files in os.walk(root):
            n = len(found)
            for fn in files:
                stem, ext = osp.splitext(fn)
                if ext.lower() in ('.jpg', '.jpeg', '.png'):
                    found.setdefault(stem, osp.relpath(osp.join(dirpath, fn), base).replace(os.sep, '/'))
            bar.update(len(found) - n)
    return found


def convert(root, out, version='2018_04', val_fraction=0.01, seed=0, missing='error', unseen_file=None,
            progress=None):
    """Convert (see the module docstring); ``progress``: True / False / None (= only when stderr is a terminal)."""
    meta_dir = osp.join(root, version)
    label_map = read_label_map(osp.join(meta_dir, 'class-descriptions.csv'))
    with open(_require(osp.join(meta_dir, 'classes-trainable.txt')), encoding='utf-8') as f:
        trainable = [ln.strip() for ln in f if ln.strip()]
    if unseen_file is None:
        unseen_file = osp.join(meta_dir, 'unseen_labels.pkl')
        if not osp.isfile(unseen_file) and osp.isfile(osp.join(meta_dir, 'unseen_labels.txt')):
            unseen_file = osp.join(meta_dir, 'unseen_labels.txt')
    unseen_all = read_unseen_mids(unseen_file)
    top = read_top_indices(osp.join(meta_dir, 'top_400_unseen.csv'), len(unseen_all))
    seen, merged_seen = _names(trainable, label_map, 'classes-trainable.txt')
    unseen, merged_unseen = _names([unseen_all[k] for k in top], label_map, 'top_400_unseen.csv')
    overlap = sorted(set(seen) & set(unseen))
    if overlap:
        raise ValueError(f'{meta_dir}: {len(overlap)} names are both seen and unseen, e.g. {overlap[0]!r}')
    classes = seen + unseen
    seen_idx = {n: i for i, n in enumerate(seen)}
    all_idx = {n: i for i, n in enumerate(classes)}
    dropped, conflicts = [], {}
    splits = {}
    for split, name_to_idx in (('train', seen_idx), ('test', all_idx)):
        labels = read_image_labels(osp.join(meta_dir, split, f'{split}-annotations-human-imagelabels.csv'),
                                   name_to_idx, label_map, progress)
        images = index_images(osp.join(root, split), progress)
        items, conflicts[split] = [], 0
        for image_id in sorted(labels):
            pos, neg = labels[image_id]
            if pos & neg:
                conflicts[split] += 1
                continue
            if image_id not in images:
                if missing == 'error':
                    raise FileNotFoundError(
                        f'{split} image {image_id} is annotated but not found under {osp.join(root, split)} '
                        '(use --missing skip to leave such images out, listed in missing_images.txt)')
                dropped.append(f'{split}/{image_id}')
                continue
            items.append(dict(img_path=images[image_id], gt_label=sorted(pos), gt_negative=sorted(neg)))
        splits[split] = items
    order = np.random.default_rng(seed).permutation(len(splits['train']))
    val_idx = set(order[:int(round(val_fraction * len(order)))].tolist())
    train = splits.pop('train')
    splits['train'] = [x for i, x in enumerate(train) if i not in val_idx]
    splits['val'] = [x for i, x in enumerate(train) if i in val_idx]
    os.makedirs(osp.join(out, 'annotations'), exist_ok=True)
    merged = {**merged_seen, **merged_unseen}
    # recorded so that a shifted seen/unseen boundary (num_seen below the number of trainable MIDs) is explained
    meta = dict(classes=classes, num_seen=len(seen), negatives='explicit', dataset=f'OpenImages-{version}',
                merged_mids=merged)
    for name in ('train', 'val', 'test'):
        with open(osp.join(out, 'annotations', f'{name}.json'), 'w') as f:
            json.dump(dict(metainfo=meta, data_list=splits[name]), f)
    for name, labels in (('labels_seen.txt', seen), ('labels_unseen.txt', unseen)):
        with open(osp.join(out, name), 'w', encoding='utf-8') as f:
            f.write('\n'.join(labels) + '\n')
    if dropped:
        with open(osp.join(out, 'missing_images.txt'), 'w') as f:
            f.write('\n'.join(dropped) + '\n')
    return dict(num_seen=len(seen), num_unseen=len(unseen), merged_names=len(merged),
                merged_mids=sum(len(m) - 1 for m in merged.values()), **{k: len(v) for k, v in splits.items()},
                conflicting_dropped=sum(conflicts.values()), missing=len(dropped),
                train_without_positive=sum(not x['gt_label'] for x in splits['train']))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('root')
    p.add_argument('out')
    p.add_argument('--version', default='2018_04')
    p.add_argument('--unseen-labels', default=None,
                   help='unseen MID list (.pkl from LESA or .txt); default ROOT/VERSION/unseen_labels.{pkl,txt}')
    p.add_argument('--val-fraction', type=float, default=0.01)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--missing', choices=('error', 'skip'), default='error')
    p.add_argument('--progress', action=argparse.BooleanOptionalAction, default=None,
                   help='progress bars on stderr (bytes of the label CSVs, image files found); default: only when '
                   'stderr is a terminal, so batch logs stay clean')
    args = p.parse_args(argv)
    if not 0 <= args.val_fraction < 1:
        p.error('--val-fraction must be in [0, 1)')
    stats = convert(args.root, args.out, args.version, args.val_fraction, args.seed, args.missing,
                    args.unseen_labels, progress=args.progress)
    print(json.dumps(stats))
    if stats['num_unseen'] != 400:
        print(f"note: {stats['num_unseen']} unseen labels (the protocol uses the 400 most frequent)")
    if stats['merged_mids']:
        print(f"WARNING: {stats['merged_mids']} MIDs share a name with another MID and were merged into "
              f"{stats['merged_names']} labels (metainfo.merged_mids): num_seen={stats['num_seen']}, "
              f"num_unseen={stats['num_unseen']}; set num_seen={stats['num_seen']} in the config "
              '(configs/qks/openimages_vitb16.py assumes 7186; a mismatch stops training and testing)',
              file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
