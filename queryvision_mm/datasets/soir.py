"""Small-object image retrieval (SoIR) annotations: VoxDet-SoIR's ``anns.pt`` and the generic SoIR JSON.

Both are one mapping from image path to an entry (pihash2k/VoxDet-SoIR ``create_dataset.py``; SoIR README)::

    query:   {"bbox": [x0, y0, x1, y1], "ins": 7, "is_query": true, "set": "RoboTools", "mask": RLE, ...}
    gallery: {"bbox": [[x0, y0, x1, y1], ...], "ins": [7, 12, -1], "is_query": false, "set": "RoboTools", ...}

``anns.pt`` is read with ``torch.load(weights_only=True)`` (plain dicts, lists, numbers and strings only); ``.json``
files with the same structure also work. Gallery ``ins`` may be padded with -1 (dropped). The paths in the official
file are absolute paths of the authors' machine: ``path_strip`` removes such a prefix before ``data_prefix`` is
joined. Gallery boxes are kept for visualisation only: MaO never crops a gallery image by its ground truth.
"""
import os.path as osp
from typing import List, Optional, Sequence

import torch
from mmengine.fileio import join_path, load

from mmpretrain.datasets import BaseDataset
from mmpretrain.registry import DATASETS


def load_soir_annotations(path: str) -> dict:
    if not osp.isfile(path):
        raise FileNotFoundError(f'SoIR annotation file not found: {path}')
    if path.endswith(('.pt', '.pth')):
        try:
            data = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:  # the safe unpickler names the offending global
            raise ValueError(f'{path}: not a plain-data torch file ({e})') from e
    else:
        data = load(path)
    if not isinstance(data, dict) or not data:
        raise ValueError(f'{path}: expected a non-empty mapping image path -> entry')
    return data


def _box(v, where):
    try:
        box = [float(x) for x in v]
    except (TypeError, ValueError):
        box = []
    if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f'{where}: bbox must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0, got {v!r}')
    return box


@DATASETS.register_module()
class QVSoIRDataset(BaseDataset):
    """Queries and gallery of a SoIR benchmark (VoxDet-SoIR, PerMiR in the generic format, the MaO demo set).

    Args:
        ann_file (str): ``anns.pt`` or a JSON file (see the module docstring).
        sets (Sequence[str], optional): keep entries whose ``set`` is listed (VoxDet-SoIR test: ``('RoboTools',)``).
        path_strip (str, optional): prefix removed from every image path before ``data_prefix`` is joined.
        data_prefix (str | dict): image root.

    Each item: ``img_path``, ``is_query``, ``instances`` (query: ``[ins]``; gallery: the instance list),
    ``query_box`` (queries), ``gt_boxes`` (gallery, may be empty), ``key`` (the path as written in the file).
    Queries come first, then the gallery, each in file order.
    """

    def __init__(self, ann_file: str, sets: Optional[Sequence[str]] = None, path_strip: Optional[str] = None,
                 **kwargs) -> None:
        self.sets = tuple(sets) if sets else None
        self.path_strip = path_strip
        kwargs.setdefault('pipeline', [])
        super().__init__(ann_file=ann_file, **kwargs)

    def _path(self, key: str) -> str:
        rel = key
        if self.path_strip and rel.startswith(self.path_strip):
            rel = rel[len(self.path_strip):].lstrip('/')
        return join_path(self.img_prefix, rel) if self.img_prefix and not osp.isabs(rel) else rel

    def load_data_list(self) -> List[dict]:
        data = load_soir_annotations(self.ann_file)
        queries, gallery = [], []
        for key, entry in data.items():
            where = f'{self.ann_file}: {key}'
            if not isinstance(entry, dict) or 'is_query' not in entry or 'ins' not in entry:
                raise KeyError(f'{where}: an entry needs "is_query" and "ins"')
            if self.sets is not None and entry.get('set') not in self.sets:
                continue
            if entry['is_query']:
                ins = entry['ins']
                if isinstance(ins, (list, tuple)):
                    if len(ins) != 1:
                        raise ValueError(f'{where}: a query has exactly one instance id, got {ins!r}')
                    ins = ins[0]
                if not isinstance(ins, int) or ins < 0:
                    raise ValueError(f'{where}: query "ins" must be a non-negative integer, got {ins!r}')
                queries.append(dict(img_path=self._path(key), key=key, is_query=True, instances=[ins],
                                    query_box=_box(entry.get('bbox'), where)))
            else:
                ins = entry['ins']
                ins = [ins] if isinstance(ins, int) else list(ins or [])
                if any(not isinstance(i, int) for i in ins):
                    raise ValueError(f'{where}: gallery "ins" must be integers, got {ins!r}')
                boxes = entry.get('bbox') or []
                boxes = [boxes] if boxes and not isinstance(boxes[0], (list, tuple)) else boxes
                gallery.append(dict(img_path=self._path(key), key=key, is_query=False,
                                    instances=[i for i in ins if i >= 0],
                                    gt_boxes=[_box(b, where) for b in boxes]))
        if not gallery:
            raise ValueError(f'{self.ann_file}: no gallery images' + (f' in sets {self.sets}' if self.sets else ''))
        self._metainfo.update(num_queries=len(queries), num_gallery=len(gallery))
        return queries + gallery
