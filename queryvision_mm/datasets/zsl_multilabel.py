"""Open-vocabulary multi-label classification data (QKS): seen + unseen labels, explicit or implicit negatives
(paper/code: jasonseu/QKS ``lib/dataset.py``), and the training Cutout of QKS (``lib/cutout.py``, from ASL)."""
from typing import List, Optional, Sequence, Union

import numpy as np
from mmengine.fileio import join_path, load

from mmpretrain.datasets import BaseDataset
from mmpretrain.datasets.transforms.auto_augment import BaseAugTransform
from mmpretrain.registry import DATASETS, TRANSFORMS


@TRANSFORMS.register_module()
class QVCutoutPIL(BaseAugTransform):
    """The Cutout of QKS's training pipeline (``CutoutPIL(cutout_factor=0.5)`` in jasonseu/QKS ``lib/cutout.py``,
    taken from Alibaba-MIIL ASL), on the numpy image of an mmpretrain pipeline.

    One hole per image, always (``prob=1.0``; the official transform has no probability, 0.5 is its size factor):
    centre ``(yc, xc)`` uniform over the pixels; half sizes ``int(size_factor * H + 0.5) // 2`` and
    ``int(size_factor * W + 0.5) // 2``; rows ``yc - half_h .. yc + half_h`` and columns ``xc - half_w .. xc + half_w``
    inclusive (PIL's ``ImageDraw.rectangle`` includes both corners: 113 x 113 pixels at 224 x 224), clipped at the
    borders (the hole shrinks, it does not move: unlike ``mmcv.cutout``); filled with one random colour, each channel
    uniform in 0..255 (``pad_val='random'``; an int or a per-channel sequence gives a constant fill instead).
    The official code names the PIL width ``h``, which swaps the axes on non-square images; its pipeline applies it
    after a square centre crop, where both readings coincide.

    Args:
        size_factor (float): Hole side relative to the image side. Defaults to 0.5 (official).
        pad_val (str | int | Sequence[int]): ``'random'`` (official) or a constant fill.
        prob (float): Probability of applying it. Defaults to 1.0 (official: always).
    """

    def __init__(self, size_factor: float = 0.5, pad_val: Union[str, int, Sequence[int]] = 'random',
                 prob: float = 1.0, **kwargs) -> None:
        super().__init__(prob=prob, random_negative_prob=0., **kwargs)
        if not 0 < size_factor <= 1:
            raise ValueError(f'QVCutoutPIL: size_factor must be in (0, 1], got {size_factor}')
        if isinstance(pad_val, str) and pad_val != 'random':
            raise ValueError(f"QVCutoutPIL: pad_val must be 'random', an int or a sequence, got {pad_val!r}")
        self.size_factor = size_factor
        self.pad_val = tuple(pad_val) if isinstance(pad_val, Sequence) and not isinstance(pad_val, str) else pad_val

    def transform(self, results: dict) -> dict:
        if self.random_disable():
            return results
        img = results['img']
        h, w = img.shape[:2]
        half_h, half_w = int(self.size_factor * h + 0.5) // 2, int(self.size_factor * w + 0.5) // 2
        yc, xc = np.random.randint(h), np.random.randint(w)
        if self.pad_val == 'random':
            fill = np.random.randint(0, 256, size=img.shape[2:])
        else:
            fill = np.asarray(self.pad_val)
        img = img.copy()
        img[max(0, yc - half_h):min(h, yc + half_h + 1), max(0, xc - half_w):min(w, xc + half_w + 1)] = fill
        results['img'] = img
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(size_factor={self.size_factor}, pad_val={self.pad_val!r}, '
                f'prob={self.prob})')


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

    ``filter_cfg=dict(filter_empty_gt=True)`` drops the images without a positive label (with ``seen_only``: without
    a seen positive), as the official QKS loader does for training (``lib/dataset.py`` drops rows whose
    ``posi_labels`` is empty; Open Images training files hold images with annotated negatives only). Default: keep
    everything (the OpenMMLab default of ``filter_cfg=None``); the QKS configs set it for training.

    The metainfo also records ``ann_file`` so that the consistency checks (metric, :class:`QVZSLConsistencyHook`)
    can name the file.
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
        self._metainfo.update(classes=tuple(classes), num_seen=int(meta['num_seen']), negatives=meta['negatives'],
                              ann_file=self.ann_file)
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

    def filter_data(self) -> List[dict]:
        cfg = self.filter_cfg or {}
        unknown = set(cfg) - {'filter_empty_gt'}
        if unknown:
            raise KeyError(f'{self.ann_file}: unknown filter_cfg keys {sorted(unknown)} (known: filter_empty_gt)')
        if not cfg.get('filter_empty_gt', False):
            return self.data_list
        return [item for item in self.data_list if item['gt_label']]

    def get_cat_ids(self, idx: int) -> List[int]:
        return list(self.get_data_info(idx)['gt_label'])
