"""MaO end to end: gallery descriptors (cached per image, resumable) -> FAISS index -> queries -> mAP / Recall@K,
and a search that returns ranked gallery images and draws them with LeGrad heatmaps. Used by ``tools/mao/*.py``.

Config keys (``configs/mao/*.py``): ``model`` or ``describer`` (a ``QVMaODescriber``), ``dataset`` (a ``QVSoIRDataset``),
``index`` (``DescriptorIndex`` options: ``type`` flat|hnsw|ivf_*, ...), ``evaluation`` (``topk``, ``chunk_size``),
``work_dir``.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..evaluation.metrics.retrieval import streaming_retrieval_metrics
from ..utils.descriptor_index import DescriptorIndex
from ..utils.image_io import read_rgb
# gallery extraction (batched, distributed, resumable, sharded cache with weight digests): ``mao_extract``
from .mao_extract import cache_entry, extract_gallery, fingerprint_record  # noqa: F401
from .mao_extract import fingerprint as _fingerprint


def describer_cfg(cfg):
    """The ``QVMaODescriber`` of a config: ``describer`` (stage-A configs, whose ``model`` is the training model) or
    ``model``."""
    return cfg.get('describer') or cfg.model


def run_extract(cfg, work_dir: Optional[str] = None, on_error: str = 'error', progress: bool = True) -> Dict:
    """Build the index of ``cfg.dataset``'s gallery with ``cfg.model`` and evaluate its queries."""
    from mmpretrain.registry import DATASETS, MODELS
    work_dir = work_dir or cfg.work_dir
    dataset = DATASETS.build(cfg.dataset)
    items = [dataset.get_data_info(i) for i in range(len(dataset))]
    queries = [x for x in items if x['is_query']]
    gallery = [x for x in items if not x['is_query']]
    dcfg = describer_cfg(cfg)
    describer = MODELS.build(dcfg)
    descs, paths, skipped, stats = extract_gallery(describer, gallery, osp.join(work_dir, 'gallery_cache'),
                                                   lambda: fingerprint_record(dcfg), on_error, progress)
    if descs is None:   # rank > 0 of a distributed run: rank 0 merged the shards, indexes and evaluates
        return None
    index = DescriptorIndex(descs.shape[1], **cfg.get('index', {}))
    index.add(descs, paths)
    index.meta.update(model=_fingerprint(dcfg), ann_file=str(cfg.dataset.get('ann_file')))
    index.save(osp.join(work_dir, 'index'))
    results = dict(gallery=len(paths), skipped=skipped, **stats)
    if queries:
        qd = np.stack([describer.describe_query(read_rgb(q['img_path']), q['query_box']) for q in queries])
        gallery_ins = {x['img_path']: x['instances'] for x in gallery}
        ev = cfg.get('evaluation', {})
        # exact full-ranking mAP / Recall@K whatever the index type, streamed over gallery chunks (no Q x G matrix)
        results.update(streaming_retrieval_metrics(
            qd, descs, [q['instances'][0] for q in queries], [gallery_ins[p] for p in paths],
            ev.get('topk', (1, 5, 10)), chunk_size=ev.get('chunk_size', 65536),
            query_chunk=ev.get('query_chunk', 256), normalize=True))
        _, top = index.search(qd, k=10)      # what the index itself returns (approximate for ANN index types)
        results['rankings'] = {q['img_path']: [paths[j] for j in r if j >= 0] for q, r in zip(queries, top)}
    with open(osp.join(work_dir, 'results.json'), 'w') as f:
        json.dump(results, f, indent=1)
    # the OWLv2 boxes of every gallery image, for stage-A training (QVSoIRPairDataset crop_source='proposals')
    boxes = {}
    for path in paths:
        meta = cache_entry(osp.join(work_dir, 'gallery_cache'), path)[1]
        if osp.isfile(meta):
            with open(meta) as f:
                boxes[path] = json.load(f)['boxes']
    with open(osp.join(work_dir, 'proposals.json'), 'w') as f:
        json.dump(boxes, f)
    return results


def search(cfg, index_dir: str, image_path: str, box: Sequence[float], topk: int = 5):
    """Rank the indexed gallery for one query object; returns (describer, query descriptor, [(path, score)])."""
    from mmpretrain.registry import MODELS
    index = DescriptorIndex.load(index_dir, **cfg.get('index', {}))
    fp = _fingerprint(describer_cfg(cfg))
    if index.meta.get('model') not in (None, fp):
        raise ValueError(f'{index_dir} was built with another model configuration ({index.meta.get("model")} != '
                         f'{fp}); query descriptors would not be comparable')
    describer = MODELS.build(describer_cfg(cfg))
    q = describer.describe_query(read_rgb(image_path), box)
    scores, ids = index.search(q[None], k=topk)
    return describer, q, [(index.paths[j], float(s)) for j, s in zip(ids[0], scores[0]) if j >= 0]


def draw_search_grid(describer, query_image: np.ndarray, box: Sequence[float], query_desc: np.ndarray,
                     results: List[Tuple[str, float]], out_file: str, heatmaps: bool = True) -> str:
    """Query (box drawn) + ranked gallery images, each overlaid with the LeGrad map of the query descriptor."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    enc = describer.encoder
    explainer = enc.explainer(layers='last') if heatmaps else None
    fig, axes = plt.subplots(1, len(results) + 1, figsize=(3 * (len(results) + 1), 3.2))
    axes = np.atleast_1d(axes)
    axes[0].imshow(query_image)
    x0, y0, x1, y1 = box
    axes[0].add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color='lime', lw=2))
    axes[0].set_title('query')
    t = torch.from_numpy(query_desc).float()[None].to(enc.device)
    for ax, (path, score) in zip(axes[1:], results):
        img = read_rgb(path)
        ax.imshow(img)
        if explainer is not None:
            m = explainer.maps(explainer.prepare(enc.preprocess([img])), t, out_size=img.shape[:2])[0]
            ax.imshow(m.detach().cpu().numpy(), cmap='jet', alpha=0.45)
        ax.set_title(f'{osp.basename(path)[:18]}\n{score:.3f}', fontsize=8)
    for ax in axes:
        ax.axis('off')
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out_file)), exist_ok=True)
    fig.savefig(out_file, dpi=80)
    plt.close(fig)
    return out_file
