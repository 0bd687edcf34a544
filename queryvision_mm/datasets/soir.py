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

import numpy as np
import torch
from mmengine.fileio import join_path, load
from mmengine.registry import FUNCTIONS

from mmpretrain.datasets import BaseDataset
from mmpretrain.registry import DATASETS

from ..utils.image_io import read_rgb


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


@DATASETS.register_module()
class QVSoIRPairDataset(QVSoIRDataset):
    """MaO stage-A training pairs: a (training) scene's object crops + a query image of an instance it contains.

    Args:
        crop_source (str): ``'proposals'`` (boxes from ``proposals_file``, e.g. the ``proposals.json`` written by
            ``tools/mao/extract.py``, as the paper's OWLv2 crops) or ``'gt'`` (the scene's annotated boxes; for
            training sets only -- evaluation galleries are never cropped by ground truth).
        proposals_file (str): JSON mapping image path -> [[x0, y0, x1, y1], ...].
        min_crop_size (int): object-centred crop side lower bound (the encoder's input size, 224).
        max_crops (int): at most this many crops per scene (the highest-scoring / first ones).

    ``__getitem__`` returns ``dict(inputs=dict(crops=[HxWx3 uint8], query=HxWx3 uint8), data_samples=
    dict(instance=id, scene_instances=[ids]))``; the query image is drawn at random among the queries of the scene's instances.
    """

    def __init__(self, ann_file: str, crop_source: str = 'proposals', proposals_file: Optional[str] = None,
                 min_crop_size: int = 224, max_crops: int = 16, **kwargs) -> None:
        if crop_source not in ('proposals', 'gt'):
            raise ValueError(f"crop_source must be 'proposals' or 'gt', got {crop_source!r}")
        if crop_source == 'proposals' and not proposals_file:
            raise ValueError("crop_source='proposals' needs proposals_file (tools/mao/extract.py writes one)")
        self.crop_source, self.proposals_file = crop_source, proposals_file
        self.min_crop_size, self.max_crops = int(min_crop_size), int(max_crops)
        super().__init__(ann_file, **kwargs)

    def load_data_list(self) -> List[dict]:
        items = super().load_data_list()
        queries: dict = {}
        for q in items:
            if q['is_query']:
                queries.setdefault(q['instances'][0], []).append(q)
        proposals = load(self.proposals_file) if self.crop_source == 'proposals' else None
        pairs = []
        for g in items:
            if g['is_query']:
                continue
            usable = [i for i in g['instances'] if i in queries]
            if not usable:
                continue
            if proposals is not None:
                boxes = proposals.get(g['img_path'], proposals.get(g['key']))
                if boxes is None:
                    raise KeyError(f'{self.proposals_file}: no proposals for {g["img_path"]}')
            else:
                boxes = g['gt_boxes']
            boxes = [_box(b, f'{g["img_path"]}') for b in boxes][:self.max_crops]
            if not boxes:
                continue   # a scene without any object gives no multi-object descriptor to train
            pairs.append(dict(img_path=g['img_path'], boxes=boxes, instances=list(g['instances']),
                              queries=[dict(img_path=q['img_path'], box=q['query_box'], instance=i)
                                       for i in usable for q in queries[i]]))
        if not pairs:
            raise ValueError(f'{self.ann_file}: no scene holds an instance that has a query image')
        return pairs

    def prepare_data(self, idx: int) -> dict:
        from ..models.retrievers.mao_components import crop_padded, square_crop_box
        info = self.get_data_info(idx)
        scene = read_rgb(info['img_path'])
        crops = [crop_padded(scene, square_crop_box(b, self.min_crop_size)) for b in info['boxes']]
        q = info['queries'][np.random.randint(len(info['queries']))]
        query = crop_padded(read_rgb(q['img_path']), square_crop_box(q['box'], 0))
        # scene_instances: every instance of the scene (stage A masks their queries as false negatives)
        return dict(inputs=dict(crops=crops, query=query),
                    data_samples=dict(instance=q['instance'], scene_instances=list(info['instances'])))


@FUNCTIONS.register_module()
def qv_scene_collate(data_batch: Sequence[dict]) -> dict:
    """Collate for :class:`QVSoIRPairDataset`: ``dict(inputs=[per-scene dict], data_samples=[per-scene dict])``.

    Scenes hold different numbers of object crops; mmengine's ``pseudo_collate`` transposes sequences and stops with
    "each data_itement in list of batch should be of equal size" as soon as two scenes of a batch differ (always, with
    OWLv2 proposals). ``QVMaOContrastiveModel`` takes the per-scene lists as they are."""
    return dict(inputs=[d['inputs'] for d in data_batch], data_samples=[d['data_samples'] for d in data_batch])
