#!/usr/bin/env python
"""PerMIRS (PerMiR benchmark of PDM, dvirsamuel/PDM) -> the generic SoIR JSON read by ``QVSoIRDataset``.

    python tools/dataset_converters/permirs_to_soir.py ROOT OUT.json [--min-rel-size 0.005]

ROOT holds one folder per video, each with three frames ``0.jpg``, ``1.jpg``, ``2.jpg`` and ``masks.npz.npy`` (a NumPy
object array of three dicts {track id: binary mask}; the first entry is the personal object). As PDM's retrieval
set-up: a video is dropped when the object covers less than ``--min-rel-size`` of any frame's square crop (side
min(W, H), centred, shifted horizontally to contain the object); the frame where it is largest is the query, the two
others are gallery images; the instance id is the video's index (folders in sorted order). Boxes come from the masks.
The mask file is an object pickle: it is read with a restricted unpickler (plain data and NumPy arrays only).
"""
import argparse
import json
import os
import os.path as osp
import sys

import numpy as np

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from queryvision_mm.utils.safe_pickle import load_object_npy  # noqa: E402


def mask_box(mask):
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def relative_size(mask, box):
    """Object area over the PDM square crop (side min(W, H), centred, shifted to contain the object's x-range)."""
    h, w = mask.shape
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    if box[0] < left:
        left = box[0]
    if box[2] - 1 > left + side:
        left = box[2] - 1 - side
    l0, t0 = int(round(left)), int(round(top))
    return float(mask[t0:t0 + side, l0:l0 + side].sum()) / (side * side)


def convert(root, min_rel_size=0.005):
    videos = sorted(d for d in os.listdir(root) if osp.isdir(osp.join(root, d)))
    if not videos:
        raise FileNotFoundError(f'{root}: no video folders')
    anns, dropped = {}, []
    for vid_idx, vid in enumerate(videos):
        mfile = osp.join(root, vid, 'masks.npz.npy')
        if not osp.isfile(mfile):
            raise FileNotFoundError(f'PerMIRS mask file not found: {mfile}')
        try:
            masks = load_object_npy(mfile)
        except Exception as e:
            raise ValueError(f'{mfile}: cannot read the masks ({e})') from e
        frames = []
        for f in range(3):
            img = osp.join(vid, f'{f}.jpg')
            if not osp.isfile(osp.join(root, img)):
                raise FileNotFoundError(f'PerMIRS frame not found: {osp.join(root, img)}')
            try:
                entry = masks[f]
                mask = np.asarray(next(iter(entry.values()))).astype(bool)
            except (IndexError, StopIteration, AttributeError, TypeError) as e:
                raise ValueError(f'{mfile}: frame {f} has no object mask ({e.__class__.__name__})') from e
            box = mask_box(mask)
            if box is None:
                raise ValueError(f'{mfile}: the object mask of frame {f} is empty')
            frames.append((img, box, relative_size(mask, box)))
        if min(r for _, _, r in frames) < min_rel_size:
            dropped.append(vid)
            continue
        q = int(np.argmax([r for _, _, r in frames]))
        for i, (img, box, _) in enumerate(frames):
            anns[img] = dict(bbox=box if i == q else [box], ins=vid_idx if i == q else [vid_idx], is_query=i == q,
                             set='PerMiR', obj_name=vid)
    return anns, dropped


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('root')
    p.add_argument('out')
    p.add_argument('--min-rel-size', type=float, default=0.005)
    args = p.parse_args(argv)
    anns, dropped = convert(args.root, args.min_rel_size)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(anns, f)
    n_q = sum(a['is_query'] for a in anns.values())
    print(json.dumps(dict(queries=n_q, gallery=len(anns) - n_q, dropped_videos=len(dropped))))
    return 0


if __name__ == '__main__':
    sys.exit(main())
