"""A SoIR benchmark split the mmpretrain way (as ``InShop``'s ``split='query'|'gallery'``), for
``QVMaORetriever`` with ``tools/test.py`` and ``ImageRetrievalInferencer``.

* ``split='gallery'``: the gallery images in file order (the retriever's prototype; the order of the descriptor
  index that ``tools/mao/extract.py`` writes for the same dataset settings).
* ``split='query'``: the query images, each with ``query_box`` and ``gt_label`` = the indices of the gallery images
  that hold its instance (relevance of the MaO protocol: ``query_ins in gallery_ins_list``), which mmpretrain's
  ``RetrievalRecall`` / ``RetrievalAveragePrecision`` read.
"""
from typing import List

from mmpretrain.registry import DATASETS

from .soir import QVSoIRDataset


@DATASETS.register_module()
class QVSoIRRetrievalDataset(QVSoIRDataset):
    """Arguments of :class:`QVSoIRDataset` plus ``split`` (``'query'`` or ``'gallery'``)."""

    def __init__(self, ann_file: str, split: str = 'query', **kwargs) -> None:
        if split not in ('query', 'gallery'):
            raise ValueError(f"QVSoIRRetrievalDataset: split must be 'query' or 'gallery', got {split!r}")
        self.split = split
        super().__init__(ann_file, **kwargs)

    def load_data_list(self) -> List[dict]:
        items = super().load_data_list()
        gallery = [x for x in items if not x['is_query']]
        if self.split == 'gallery':
            return gallery
        holders: dict = {}
        for i, g in enumerate(gallery):
            for ins in set(g['instances']):
                holders.setdefault(ins, []).append(i)
        queries = [dict(q, gt_label=holders.get(q['instances'][0], [])) for q in items if q['is_query']]
        if not queries:
            raise ValueError(f'{self.ann_file}: no query images' + (f' in sets {self.sets}' if self.sets else ''))
        return queries
