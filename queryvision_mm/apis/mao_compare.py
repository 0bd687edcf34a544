"""MaO's central comparison on a SoIR dataset: one global descriptor per gallery image vs the multi-object descriptor,
with the same crop encoder and the same query descriptors (arXiv 2503.07038, Sec. 4: e.g. DINOv2 global 51.23 vs
MaO-DINOv2 70.20 mAP on VoxDet, authors' README). Used by ``tools/mao/compare_global.py``.

Rows (``variants``; each evaluated with ``streaming_retrieval_metrics``: mAP over the full ranking, Recall@K):

* ``global``: the whole gallery image squashed to the encoder's input and embedded (MaO's object-less fallback);
* ``proposals[:MIN_CROP]``: the describer of the config as it is (its proposal model -> object-centred crops -> its
  aggregation: stage B, or the mean of the L2-normalised crop embeddings with ``refine=None``);
* ``oracle[:MIN_CROP]``: the same describer with the ground-truth boxes of each gallery image as proposals
  (:class:`FixedProposals`; images without annotated object get the whole-image fallback, as with no detection) --
  isolates the descriptor question from the proposal quality.

``MIN_CROP`` overrides the describer's ``min_crop_size`` for that row (``0``: square crops of side max(w, h), tight
around the object; default: the config's, i.e. the encoder's input size, the paper's rule). Queries are always the
describer's query crops (square of side max(w, h) around the query box), identical for every row.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..evaluation.metrics.retrieval import streaming_retrieval_metrics
from ..utils.image_io import read_rgb

DEFAULT_VARIANTS = ('global', 'proposals', 'oracle', 'oracle:0')
SOURCES = ('global', 'proposals', 'oracle')


class FixedProposals(nn.Module):
    """Proposal stand-in returning given boxes (e.g. ground truth: oracle proposals), with the interface the
    describer calls (:meth:`forward_batch` of ``QVOWLv2Objectness``). Set the boxes of the next batch with
    :meth:`set_boxes`; each set is used once."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: Optional[List[torch.Tensor]] = None

    def set_boxes(self, boxes: Sequence[Sequence[Sequence[float]]]) -> None:
        self._pending = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]

    @torch.no_grad()
    def forward_batch(self, images: List[np.ndarray]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        if self._pending is None or len(self._pending) != len(images):
            raise RuntimeError(f'FixedProposals: {len(images)} images but boxes set for '
                               f'{None if self._pending is None else len(self._pending)} (call set_boxes first)')
        boxes, self._pending = self._pending, None
        return [(b, torch.ones(len(b))) for b in boxes]


def parse_variant(spec: str) -> Tuple[str, Optional[int]]:
    """``'global'`` | ``'proposals[:MIN_CROP]'`` | ``'oracle[:MIN_CROP]'`` -> (source, min_crop_size or None)."""
    source, _, crop = str(spec).partition(':')
    if source not in SOURCES:
        raise ValueError(f'variant {spec!r}: the source must be one of {SOURCES} (optionally :MIN_CROP)')
    if source == 'global' and crop:
        raise ValueError(f'variant {spec!r}: the global descriptor has no crop size')
    if crop and not crop.isdigit():
        raise ValueError(f'variant {spec!r}: MIN_CROP must be a non-negative integer')
    return source, (int(crop) if crop else None)


def _batches(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def compare_global_vs_multi_object(cfg, variants: Sequence[str] = DEFAULT_VARIANTS, ks: Sequence[int] = (1, 5, 10),
                                   batch_size: Optional[int] = None) -> List[Dict[str, object]]:
    """One row per variant (see the module docstring): dict(variant, descriptor, proposals, aggregation,
    min_crop_size, crops_per_image, fallback_images, mAP, R@K ... in %, num_queries, num_gallery)."""
    from mmpretrain.registry import DATASETS, MODELS

    from .mao import describer_cfg
    parsed = [(v, *parse_variant(v)) for v in variants]
    dataset = DATASETS.build(cfg.dataset)
    items = [dataset.get_data_info(i) for i in range(len(dataset))]
    queries = [x for x in items if x['is_query']]
    gallery = [x for x in items if not x['is_query']]
    if not queries:
        raise ValueError(f'{cfg.dataset.get("ann_file")}: no queries to evaluate')
    describer = MODELS.build(describer_cfg(cfg))
    bs = int(batch_size or describer.batch_size)
    config_proposals, config_min_crop = describer.proposals, describer.min_crop_size
    aggregation = 'stage B' if describer.refiner is not None else 'mean of crop embeddings'
    q_desc = np.concatenate([
        describer.describe_queries([read_rgb(q['img_path']) for q in chunk], [q['query_box'] for q in chunk])
        for chunk in _batches(queries, bs)])
    q_ins = [q['instances'][0] for q in queries]
    g_ins = [g['instances'] for g in gallery]
    rows = []
    for name, source, min_crop in parsed:
        descs, crops, fallback = [], 0, 0
        describer.proposals = FixedProposals() if source == 'oracle' else config_proposals
        describer.min_crop_size = config_min_crop if min_crop is None else min_crop
        for chunk in _batches(gallery, bs):
            images = [read_rgb(g['img_path']) for g in chunk]
            if source == 'global':
                descs.append(describer.encoder.embed(images).cpu().numpy())
                continue
            if source == 'oracle':
                describer.proposals.set_boxes([g.get('gt_boxes', []) for g in chunk])
            with torch.enable_grad():     # stage B differentiates LeGrad maps
                outs = describer.describe_gallery_batch(images)
            descs.append(np.stack([o['descriptor'] for o in outs]))
            crops += sum(len(o['boxes']) for o in outs)
            fallback += sum(bool(o['fallback']) for o in outs)
        g_desc = np.concatenate(descs).astype(np.float32)
        metrics = streaming_retrieval_metrics(q_desc, g_desc, q_ins, g_ins, ks, normalize=True)
        rows.append(dict(
            variant=name, descriptor='global (whole image)' if source == 'global' else 'multi-object (MaO)',
            proposals={'global': '-', 'proposals': 'config proposal model',
                       'oracle': 'ground-truth boxes (oracle)'}[source],
            aggregation='-' if source == 'global' else aggregation,
            min_crop_size=None if source == 'global' else int(describer.min_crop_size),
            crops_per_image=None if source == 'global' else crops / len(gallery),
            fallback_images=len(gallery) if source == 'global' else fallback,
            num_gallery=len(gallery), **metrics))
    describer.proposals, describer.min_crop_size = config_proposals, config_min_crop
    return rows


def format_table(rows: List[Dict[str, object]], ks: Sequence[int] = (1, 5, 10)) -> str:
    """A Markdown table of :func:`compare_global_vs_multi_object`'s rows."""
    head = ['variant', 'gallery descriptor', 'proposals', 'min crop', 'crops/img', 'fallback', 'mAP'] + \
        [f'R@{k}' for k in ks]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        cells = [r['variant'], r['descriptor'] + ('' if r['aggregation'] == '-' else f", {r['aggregation']}"),
                 r['proposals'], '-' if r['min_crop_size'] is None else str(r['min_crop_size']),
                 '-' if r['crops_per_image'] is None else f"{r['crops_per_image']:.2f}",
                 f"{r['fallback_images']}/{r['num_gallery']}", f"{r['mAP']:.1f}"] + \
            [f"{r[f'R@{k}']:.1f}" for k in ks]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)
