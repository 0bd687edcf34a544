#!/usr/bin/env python
"""NUS-WIDE (raw release) -> QKS zero-shot multi-label annotation files (OpenMMLab 2.0 JSON).

    python tools/dataset_converters/nuswide_to_json.py RAW_DIR OUT_DIR [--val-fraction 0.1] [--seed 0]
        [--missing error|skip]

RAW_DIR holds the release files: ``ImageList/TrainImagelist.txt``, ``ImageList/TestImagelist.txt``,
``NUS_WID_Tags/Train_Tags1k.dat``, ``NUS_WID_Tags/Test_Tags1k.dat``, ``NUS_WID_Tags/TagList1k.txt``,
``Concepts81.txt``, ``Groundtruth/TrainTestLabels/Labels_<concept>_Test.txt`` and the images under ``Flickr/``.

Split (as the QKS/MKT zero-shot protocol): unseen = the 81 concepts (``Concepts81.txt`` order); seen = the 1,000
tags minus those 81 (``TagList1k.txt`` order; 925 in the official release); classes = seen + unseen. Training images:
those with at least one seen positive (``Train_Tags1k.dat``, seen columns only). Test images: those with at least one
positive among the seen tags (``Test_Tags1k.dat``) or the 81 concepts (the ground-truth files). Every non-positive
label is a negative (``negatives: complement``). A deterministic ``--val-fraction`` of the training images becomes
``val.json`` (model selection on seen labels; the test set is never used for it).

Writes ``OUT_DIR/annotations/{train,val,test}.json``, ``OUT_DIR/labels_seen.txt``, ``OUT_DIR/labels_unseen.txt``.
Image paths are relative to ``RAW_DIR/Flickr`` (the release's ``\\`` separators become ``/``). With
``--missing skip`` images absent from ``Flickr/`` are left out and listed in ``OUT_DIR/missing_images.txt``; by
default a missing image is an error naming it.
"""
import argparse
import json
import os
import os.path as osp
import sys

import numpy as np


def _lines(path):
    if not osp.isfile(path):
        raise FileNotFoundError(f'NUS-WIDE file not found: {path}')
    with open(path, encoding='utf-8', errors='strict') as f:
        return [ln.strip() for ln in f if ln.strip()]


def _matrix(path, rows, cols):
    lines = _lines(path)
    if len(lines) != rows:
        raise ValueError(f'{path}: {len(lines)} rows, the image list has {rows}')
    m = np.zeros((rows, cols), dtype=np.uint8)
    for i, ln in enumerate(lines):
        vals = ln.split()
        if len(vals) != cols or any(v not in ('0', '1') for v in vals):
            raise ValueError(f'{path}: line {i + 1} must hold {cols} values of 0/1')
        m[i] = np.asarray(vals, dtype=np.uint8)
    return m


def convert(raw, out, val_fraction=0.1, seed=0, missing='error'):
    tags = _lines(osp.join(raw, 'NUS_WID_Tags', 'TagList1k.txt'))
    concepts = _lines(osp.join(raw, 'Concepts81.txt'))
    if len(set(tags)) != len(tags) or len(set(concepts)) != len(concepts):
        raise ValueError(f'{raw}: duplicate names in TagList1k.txt or Concepts81.txt')
    unseen = set(concepts)
    seen_cols = [i for i, t in enumerate(tags) if t not in unseen]
    seen = [tags[i] for i in seen_cols]
    classes = seen + concepts
    lists = {s: [p.replace('\\', '/') for p in _lines(osp.join(raw, 'ImageList', f'{s}Imagelist.txt'))]
             for s in ('Train', 'Test')}
    tag_m = {s: _matrix(osp.join(raw, 'NUS_WID_Tags', f'{s}_Tags1k.dat'), len(lists[s]), len(tags))
             for s in ('Train', 'Test')}
    gt = np.zeros((len(lists['Test']), len(concepts)), dtype=np.uint8)
    for j, c in enumerate(concepts):
        gt[:, j] = _matrix(osp.join(raw, 'Groundtruth', 'TrainTestLabels', f'Labels_{c}_Test.txt'),
                           len(lists['Test']), 1)[:, 0]
    img_root = osp.join(raw, 'Flickr')
    dropped = []

    def keep(path):
        if osp.isfile(osp.join(img_root, path)):
            return True
        if missing == 'error':
            raise FileNotFoundError(f'image listed in ImageList but not found: {osp.join(img_root, path)} '
                                    '(use --missing skip to leave such images out, listed in missing_images.txt)')
        dropped.append(path)
        return False

    train = []
    seen_tags = tag_m['Train'][:, seen_cols]
    for path, row in zip(lists['Train'], seen_tags):
        pos = np.flatnonzero(row).tolist()
        if pos and keep(path):
            train.append(dict(img_path=path, gt_label=pos))
    test = []
    for path, row, con in zip(lists['Test'], tag_m['Test'][:, seen_cols], gt):
        pos = np.flatnonzero(row).tolist() + (len(seen) + np.flatnonzero(con)).tolist()
        if pos and keep(path):
            test.append(dict(img_path=path, gt_label=pos))
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = int(round(val_fraction * len(train)))
    val_idx = set(order[:n_val].tolist())
    splits = dict(train=[x for i, x in enumerate(train) if i not in val_idx],
                  val=[x for i, x in enumerate(train) if i in val_idx], test=test)
    os.makedirs(osp.join(out, 'annotations'), exist_ok=True)
    meta = dict(classes=classes, num_seen=len(seen), negatives='complement', dataset='NUS-WIDE')
    for name, items in splits.items():
        with open(osp.join(out, 'annotations', f'{name}.json'), 'w') as f:
            json.dump(dict(metainfo=meta, data_list=items), f)
    for name, labels in (('labels_seen.txt', seen), ('labels_unseen.txt', concepts)):
        with open(osp.join(out, name), 'w') as f:
            f.write('\n'.join(labels) + '\n')
    if dropped:
        with open(osp.join(out, 'missing_images.txt'), 'w') as f:
            f.write('\n'.join(dropped) + '\n')
    return dict(num_seen=len(seen), num_unseen=len(concepts), **{k: len(v) for k, v in splits.items()},
                missing=len(dropped))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('raw')
    p.add_argument('out')
    p.add_argument('--val-fraction', type=float, default=0.1)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--missing', choices=('error', 'skip'), default='error')
    args = p.parse_args(argv)
    if not 0 <= args.val_fraction < 1:
        p.error('--val-fraction must be in [0, 1)')
    stats = convert(args.raw, args.out, args.val_fraction, args.seed, args.missing)
    print(json.dumps(stats))
    if stats['num_seen'] != 925 or stats['num_unseen'] != 81:
        print(f"note: {stats['num_seen']} seen / {stats['num_unseen']} unseen labels (the official split has 925 / 81)")
    return 0


if __name__ == '__main__':
    sys.exit(main())
