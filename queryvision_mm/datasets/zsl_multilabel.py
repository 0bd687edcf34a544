"""Open-vocabulary multi-label classification data (QKS): seen + unseen labels, explicit or implicit negatives."""
from typing import List, Optional

from mmengine.fileio import join_path, load

from mmpretrain.datasets import BaseDataset
from mmpretrain.registry import DATASETS


@DATASETS.register_module()
class QVZSLMultiLabelDataset(BaseDataset):
    """OpenMMLab 2.0 annotation file written by ``tools/dataset_converters/{nuswide,openimages}_to_json.py``::

        {"metainfo": {"classes": [seen..., unseen...], "num_seen": 925, "negatives": "complement"},
         "data_list": [{"img_path": "Flickr/actor/0001_2124494179.jpg", "gt_label": [3, 17],
                        "gt_negative": [5]}, ...]}

    ``gt_label`` are positive label indices over ``classes``; ``gt_negative`` (Open Images: annotated negatives;
    absent labels are unknown) is only meaningful with ``negatives='explicit'`` (NUS-WIDE: ``complement``, every
    non-positive is a negative). Every index is checked on load (an error names the file and the image). With
    ``seen_only=True`` (training) an image holding an unseen label is an error: training annotations must not leak
    unseen labels.
    """

    def __init__(self, ann_file: str, seen_only: bool = False, **kwargs) -> None:
        self.seen_only = seen_only
        super().__init__(ann_file=ann_file, **kwargs)

    def load_data_list(self) -> List[dict]:
        data = load(self.ann_file)
        if not isinstance(data, dict) or 'data_list' not in data or 'metainfo' not in data:
            raise ValueError(f'{self.ann_file}: expected {{"metainfo": ..., "data_list": [...]}}')
        meta = data['metainfo']
        for key in ('classes', 'num_seen', 'negatives'):
            if key not in meta:
                raise KeyError(f'{self.ann_file}: metainfo has no "{key}"')
        classes = list(meta['classes'])
        given = self._metainfo.get('classes')
        if given is not None and list(given) != classes:
            first = next((i for i, (a, b) in enumerate(zip(given, classes)) if a != b), min(len(given), len(classes)))
            raise ValueError(f'{self.ann_file}: classes differ from the config\'s metainfo at index {first} '
                             f'({len(classes)} vs {len(given)} classes)')
        if len(set(classes)) != len(classes):
            raise ValueError(f'{self.ann_file}: duplicate class names')
        if meta['negatives'] not in ('complement', 'explicit'):
            raise ValueError(f'{self.ann_file}: metainfo.negatives must be complement or explicit')
        self._metainfo.update(classes=tuple(classes), num_seen=int(meta['num_seen']), negatives=meta['negatives'])
        n, n_seen = len(classes), int(meta['num_seen'])
        limit = n_seen if self.seen_only else n
        out = []
        for i, item in enumerate(data['data_list']):
            if 'img_path' not in item or 'gt_label' not in item:
                raise KeyError(f'{self.ann_file}: data_list[{i}] needs img_path and gt_label')
            for key in ('gt_label', 'gt_negative'):
                idx = item.get(key, [])
                bad = [j for j in idx if not isinstance(j, int) or not 0 <= j < limit]
                if bad:
                    what = 'a seen label index' if self.seen_only else f'a label index < {n}'
                    raise ValueError(f'{self.ann_file}: {item["img_path"]}: {key} {bad[0]!r} is not {what}')
            info = dict(img_path=join_path(self.img_prefix, item['img_path']) if self.img_prefix else item['img_path'],
                        gt_label=list(item['gt_label']))
            if 'gt_negative' in item:
                info['gt_negative'] = list(item['gt_negative'])
            out.append(info)
        return out

    def get_cat_ids(self, idx: int) -> List[int]:
        return list(self.get_data_info(idx)['gt_label'])
