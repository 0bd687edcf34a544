"""MaO end to end: gallery descriptors (cached per image, resumable) -> FAISS index -> queries -> mAP / Recall@K,
and a search that returns ranked gallery images and draws them with LeGrad heatmaps. Used by ``tools/mao/*.py``.

Config keys (``configs/mao/*.py``): ``model`` or ``describer`` (a ``QVMaODescriber``), ``dataset`` (a ``QVSoIRDataset``),
``index`` (``DescriptorIndex`` options), ``evaluation`` (``topk``), ``work_dir``.
"""
import hashlib
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..evaluation.metrics.retrieval import relevance_matrix, retrieval_metrics
from ..utils.descriptor_index import DescriptorIndex
from ..utils.image_io import read_rgb


def describer_cfg(cfg):
    """The ``QVMaODescriber`` of a config: ``describer`` (stage-A configs, whose ``model`` is the training model) or
    ``model``."""
    return cfg.get('describer') or cfg.model


def _fingerprint(model_cfg) -> str:
    text = json.dumps(model_cfg.to_dict() if hasattr(model_cfg, 'to_dict') else model_cfg, sort_keys=True,
                      default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(size=list(r['size']), counts=r['counts'].decode('ascii'))


def extract_gallery(describer, items: Sequence[dict], cache_dir: str, fingerprint: str, on_error: str = 'error',
                    progress: bool = True) -> Tuple[np.ndarray, List[str], List[str], Dict[str, int]]:
    """Descriptors of the gallery ``items`` (dataset entries), one cache file per image under ``cache_dir``.

    A second run reuses every cached image (resume after an interruption); a cache written with another model
    configuration is refused. ``on_error='skip'`` leaves unreadable images out (returned in ``skipped``).
    """
    os.makedirs(cache_dir, exist_ok=True)
    fp_file = osp.join(cache_dir, 'fingerprint.json')
    if osp.isfile(fp_file):
        with open(fp_file) as f:
            old = json.load(f)['model']
        if old != fingerprint:
            raise ValueError(f'{cache_dir} holds descriptors of another model configuration ({old} != {fingerprint});'
                             ' use another work_dir or delete the cache')
    else:
        with open(fp_file, 'w') as f:
            json.dump(dict(model=fingerprint), f)
    from tqdm import tqdm
    descs, paths, skipped = [], [], []
    stats = dict(cached=0, computed=0, fallback=0, objects=0)
    for item in tqdm(items, desc='gallery', unit='img', disable=not progress):
        key = hashlib.sha1(item['img_path'].encode()).hexdigest()
        npz = osp.join(cache_dir, key + '.npz')
        if osp.isfile(npz):
            with np.load(npz, allow_pickle=False) as z:
                desc, fallback, n_obj = z['descriptor'], bool(z['fallback']), int(len(z['boxes']))
            stats['cached'] += 1
        else:
            try:
                image = read_rgb(item['img_path'])
            except OSError:
                if on_error == 'skip':
                    skipped.append(item['img_path'])
                    continue
                raise
            out = describer.describe_gallery(image)
            desc, fallback, n_obj = out['descriptor'], bool(out['fallback']), len(out['boxes'])
            masks = out['masks']
            with open(osp.join(cache_dir, key + '.json'), 'w') as f:
                json.dump(dict(img_path=item['img_path'], boxes=out['boxes'].tolist(), scores=out['scores'].tolist(),
                               masks=[_rle(m) for m in masks.cpu().numpy()] if masks is not None else None), f)
            tmp = npz + '.tmp.npz'
            np.savez(tmp, descriptor=desc, boxes=out['boxes'].numpy(), fallback=fallback)
            os.replace(tmp, npz)      # a crash never leaves a half-written cache entry
            stats['computed'] += 1
        stats['fallback'] += int(fallback)
        stats['objects'] += n_obj
        descs.append(desc)
        paths.append(item['img_path'])
    if not descs:
        raise ValueError('the gallery is empty (no readable gallery image)')
    return np.stack(descs).astype(np.float32), paths, skipped, stats


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
                                                   _fingerprint(dcfg), on_error, progress)
    index = DescriptorIndex(descs.shape[1], **cfg.get('index', {}))
    index.add(descs, paths)
    index.meta.update(model=_fingerprint(dcfg), ann_file=str(cfg.dataset.get('ann_file')))
    index.save(osp.join(work_dir, 'index'))
    results = dict(gallery=len(paths), skipped=skipped, **stats)
    if queries:
        qd = np.stack([describer.describe_query(read_rgb(q['img_path']), q['query_box']) for q in queries])
        _, rankings = index.search(qd)
        gallery_ins = {x['img_path']: x['instances'] for x in gallery}
        rel = relevance_matrix([q['instances'][0] for q in queries], [gallery_ins[p] for p in paths])
        results.update(retrieval_metrics(rankings, rel, cfg.get('evaluation', {}).get('topk', (1, 5, 10))))
        results['rankings'] = {q['img_path']: [paths[j] for j in r[:10]] for q, r in zip(queries, rankings)}
    with open(osp.join(work_dir, 'results.json'), 'w') as f:
        json.dump(results, f, indent=1)
    # the OWLv2 boxes of every gallery image, for stage-A training (QVSoIRPairDataset crop_source='proposals')
    boxes = {}
    for path in paths:
        meta = osp.join(work_dir, 'gallery_cache', hashlib.sha1(path.encode()).hexdigest() + '.json')
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
    return describer, q, [(index.paths[j], float(s)) for j, s in zip(ids[0], scores[0])]


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
    t = torch.from_numpy(query_desc).float()[None]
    for ax, (path, score) in zip(axes[1:], results):
        img = read_rgb(path)
        ax.imshow(img)
        if explainer is not None:
            m = explainer.maps(explainer.prepare(enc.preprocess([img])), t, out_size=img.shape[:2])[0]
            ax.imshow(m.detach().numpy(), cmap='jet', alpha=0.45)
        ax.set_title(f'{osp.basename(path)[:18]}\n{score:.3f}', fontsize=8)
    for ax in axes:
        ax.axis('off')
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out_file)), exist_ok=True)
    fig.savefig(out_file, dpi=80)
    plt.close(fig)
    return out_file
