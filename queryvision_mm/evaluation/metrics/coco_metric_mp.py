"""``QVCocoMetric``: mmdet 3.3's ``CocoMetric`` with a configurable multi-process evaluation (V3Det scale).

mmdet's ``COCOevalMP`` (``use_mp_eval=True``) hard-codes 8 processes, one block of categories each, and every
process first lists all (category, area range, image) triples of its block: for V3Det val (13,204 categories x 4 area
ranges x 29,821 images, ~1.6e9 triples) those lists alone take tens of GB per process, which is how the V3Det
repository's users ran out of 400 GB of RAM. :class:`QVCOCOevalMP` takes the number of processes and of category
blocks (more blocks than processes = fewer triples in memory at a time) and walks the triples lazily; the
per-image matching (``COCOeval.evaluateImg``), the order of ``evalImgs`` and so ``accumulate`` / ``summarize`` are
pycocotools' / mmdet's, so the numbers are the same. :class:`QVCocoMetric` uses it for the duration of its own
``compute_metrics`` (mmdet's ``compute_metrics`` names ``COCOevalMP`` from its module).
"""
import copy
import itertools
from functools import partial
from typing import Dict, List, Optional

import numpy as np
import torch.multiprocessing as mp
from mmengine.logging import MMLogger

from mmdet.datasets.api_wrappers import COCOevalMP
from mmdet.evaluation.metrics import coco_metric as _coco_metric_module
from mmdet.evaluation.metrics.coco_metric import CocoMetric
from mmdet.registry import METRICS


class QVCOCOevalMP(COCOevalMP):
    """``COCOevalMP`` with ``nproc`` worker processes over ``nchunks`` contiguous category blocks (default: one
    per process); ``nproc=1`` evaluates in this process."""

    def __init__(self, *args, nproc: int = 8, nchunks: Optional[int] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if nproc < 1 or (nchunks is not None and nchunks < 1):
            raise ValueError(f'QVCOCOevalMP: nproc and nchunks must be >= 1, got {nproc}, {nchunks}')
        self.nproc, self.nchunks = nproc, nchunks

    def evaluate(self) -> None:
        p = self.params
        if p.useSegm is not None:  # pycocotools' backward compatibility
            p.iouType = 'segm' if p.useSegm == 1 else 'bbox'
        p.imgIds = list(np.unique(p.imgIds))
        if p.useCats:
            p.catIds = list(np.unique(p.catIds))
        p.maxDets = sorted(p.maxDets)
        cat_ids = p.catIds if p.useCats else [-1]
        nchunks = max(1, min(self.nchunks or self.nproc, len(cat_ids)))
        chunks = [c.tolist() for c in np.array_split(np.asarray(cat_ids), nchunks)]
        nproc = min(self.nproc, nchunks)
        MMLogger.get_current_instance().info(
            f'COCO evaluation: {len(cat_ids)} categories in {nchunks} blocks, {nproc} process(es)')
        if nproc == 1:
            blocks = [self._evaluateImg(c) for c in chunks]
        else:
            with mp.Pool(nproc) as pool:  # imap keeps the block order (= COCOeval's category-major order)
                blocks = list(pool.imap(self._evaluateImg, chunks, chunksize=1))
        self.evalImgs = list(itertools.chain.from_iterable(blocks))
        self._paramsEval = copy.deepcopy(self.params)

    def _evaluateImg(self, catids_chunk: List[int]) -> list:
        self._prepare()
        p = self.params
        max_det = max(p.maxDets)
        return [
            self.evaluateImg(img_id, cat_id, area, max_det) for cat_id in catids_chunk for area in p.areaRng
            for img_id in p.imgIds
        ]


@METRICS.register_module()
class QVCocoMetric(CocoMetric):
    """``CocoMetric`` whose ``use_mp_eval=True`` evaluation runs :class:`QVCOCOevalMP`.

    Args:
        mp_eval_procs (int): Evaluation processes (mmdet: 8, fixed; the official CQ-DINO fork: 64). 1 = no
            subprocesses. Each process holds a copy of the ground truth and the detections.
        mp_eval_chunks (int, optional): Category blocks; more blocks than processes lower the peak memory.
            Defaults to one block per process.
        Others: see ``mmdet.evaluation.CocoMetric`` (``use_mp_eval=False`` is ``CocoMetric`` unchanged).
    """

    def __init__(self, *args, mp_eval_procs: int = 8, mp_eval_chunks: Optional[int] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if mp_eval_procs < 1 or (mp_eval_chunks is not None and mp_eval_chunks < 1):
            raise ValueError(f'QVCocoMetric: mp_eval_procs / mp_eval_chunks must be >= 1, got {mp_eval_procs}, '
                             f'{mp_eval_chunks}')
        self.mp_eval_procs, self.mp_eval_chunks = mp_eval_procs, mp_eval_chunks

    def compute_metrics(self, results: list) -> Dict[str, float]:
        if not self.use_mp_eval:
            return super().compute_metrics(results)
        original = _coco_metric_module.COCOevalMP
        _coco_metric_module.COCOevalMP = partial(QVCOCOevalMP, nproc=self.mp_eval_procs, nchunks=self.mp_eval_chunks)
        try:
            return super().compute_metrics(results)
        finally:
            _coco_metric_module.COCOevalMP = original
