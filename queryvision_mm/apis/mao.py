"""MaO end to end: gallery descriptors (cached per image, resumable) -> FAISS index -> queries -> mAP / Recall@K,
and a search that returns ranked gallery images and draws them with LeGrad heatmaps. Used by ``tools/mao/*.py``.

Both run on :class:`~queryvision_mm.models.retrievers.QVMaORetriever` (built from the config's describer and
``index`` settings by :func:`build_retriever`): the gallery is described in batches through the sharded cache
(``mao_extract.extract_gallery``), indexed by ``QVMaORetriever.build_index``; queries are embedded in batches of the
describer's ``batch_size`` with ``QVMaORetriever.extract_feat(..., role='query')`` and ranked with
``QVMaORetriever.rank`` / ``search``. The search picture is drawn by ``QVMaORetrievalVisualizer``
(``queryvision_mm.visualization.mao_retrieval_visualizer``).

Config keys (``configs/mao/*.py``): ``model`` or ``describer`` (a ``QVMaODescriber``), ``dataset`` (a ``QVSoIRDataset``),
``index`` (``DescriptorIndex`` options: ``type`` flat|hnsw|ivf_*, ...), ``evaluation`` (``topk``, ``chunk_size``),
``work_dir``.
"""
import json
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..evaluation.metrics.retrieval import streaming_retrieval_metrics
from ..utils.image_io import read_rgb
# gallery extraction (batched, distributed, resumable, sharded cache with weight digests): ``mao_extract``
from .mao_extract import cache_entry, extract_gallery, fingerprint_record  # noqa: F401


def describer_cfg(cfg):
    """The ``QVMaODescriber`` of a config: ``describer`` (stage-A and retriever configs), else ``model`` (or the
    ``describer`` of a ``QVMaORetriever`` model)."""
    if cfg.get('describer'):
        return cfg.describer
    model = cfg.model
    return model.describer if model.get('type') == 'QVMaORetriever' else model


def build_retriever(cfg):
    """A :class:`QVMaORetriever` of the config's describer with its ``index`` settings and no prototype yet (the
    tools give it one: ``build_index`` + ``set_index``, or ``load_index``)."""
    from mmpretrain.registry import MODELS

    from ..models.retrievers import mao  # noqa: F401  (registers QVMaODescriber and its components)
    from ..models.retrievers.mao_retriever import QVMaORetriever
    return MODELS.build(dict(type=QVMaORetriever, describer=describer_cfg(cfg), index=dict(cfg.get('index') or {}),
                             topk=-1))


def embed_queries(retriever, queries: Sequence[dict], batch_size: Optional[int] = None) -> np.ndarray:
    """Descriptors [Q, D] of query items (``img_path``, ``query_box``): ``batch_size`` images (default: the
    describer's ``batch_size``, as the gallery) read and embedded per ``extract_feat(..., role='query')`` call."""
    from mmpretrain.structures import DataSample
    bs = int(batch_size or getattr(retriever.describer, 'batch_size', 8) or 8)
    out = []
    for start in range(0, len(queries), bs):
        chunk = queries[start:start + bs]
        images = [read_rgb(q['img_path']) for q in chunk]
        samples = [DataSample(metainfo=dict(query_box=list(q['query_box']))) for q in chunk]
        out.append(retriever.extract_feat(images, samples, role='query').numpy())
    return np.concatenate(out).astype(np.float32)


def run_extract(cfg, work_dir: Optional[str] = None, on_error: str = 'error', progress: bool = True) -> Dict:
    """Build the index of ``cfg.dataset``'s gallery with the config's describer (through :func:`build_retriever`)
    and evaluate its queries (embedded in batches)."""
    from mmpretrain.registry import DATASETS
    work_dir = work_dir or cfg.work_dir
    dataset = DATASETS.build(cfg.dataset)
    items = [dataset.get_data_info(i) for i in range(len(dataset))]
    queries = [x for x in items if x['is_query']]
    gallery = [x for x in items if not x['is_query']]
    dcfg = describer_cfg(cfg)
    retriever = build_retriever(cfg)
    descs, paths, skipped, stats = extract_gallery(retriever.describer, gallery,
                                                   osp.join(work_dir, 'gallery_cache'),
                                                   lambda: fingerprint_record(dcfg), on_error, progress)
    if descs is None:   # rank > 0 of a distributed run: rank 0 merged the shards, indexes and evaluates
        return None
    index = retriever.build_index(descs, paths)      # stamped with the describer fingerprint
    index.meta.update(ann_file=str(cfg.dataset.get('ann_file')))
    index.save(osp.join(work_dir, 'index'))
    retriever.set_index(index)
    results = dict(gallery=len(paths), skipped=skipped, **stats)
    if queries:
        qd = embed_queries(retriever, queries)
        gallery_ins = {x['img_path']: x['instances'] for x in gallery}
        ev = cfg.get('evaluation', {})
        # exact full-ranking mAP / Recall@K whatever the index type, streamed over gallery chunks (no Q x G matrix)
        results.update(streaming_retrieval_metrics(
            qd, descs, [q['instances'][0] for q in queries], [gallery_ins[p] for p in paths],
            ev.get('topk', (1, 5, 10)), chunk_size=ev.get('chunk_size', 65536),
            query_chunk=ev.get('query_chunk', 256), normalize=True))
        # what the index itself returns (approximate for ANN index types)
        results['rankings'] = {q['img_path']: [p for p, _ in ranked]
                               for q, ranked in zip(queries, retriever.rank(qd, topk=10))}
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
    """Rank the indexed gallery for one query object with :meth:`QVMaORetriever.search` (the index is refused if
    another describer configuration made it); returns (describer, query descriptor, [(path, score)])."""
    retriever = build_retriever(cfg)
    retriever.set_index(retriever.load_index(index_dir))
    ranked, q = retriever.search(read_rgb(image_path), box, topk=topk)
    return retriever.describer, q, ranked


# ----------------------------------------------------------------------------------------------------- the picture
def gallery_object_boxes(describer, images: Sequence[np.ndarray], paths: Sequence[str],
                         cache_dir: Optional[str] = None) -> List[np.ndarray]:
    """The OWLv2 object boxes [N, 4] of gallery images: from the extraction cache (``WORK_DIR/gallery_cache``) when
    it holds the image, else from the describer's proposal model (none without one)."""
    boxes: List[Optional[np.ndarray]] = [None] * len(images)
    if cache_dir and osp.isfile(osp.join(cache_dir, 'fingerprint.json')):
        for i, path in enumerate(paths):
            meta = cache_entry(cache_dir, path)[1]
            if osp.isfile(meta):
                with open(meta) as f:
                    boxes[i] = np.asarray(json.load(f)['boxes'], dtype=np.float32).reshape(-1, 4)
    todo = [i for i, b in enumerate(boxes) if b is None]
    if todo and describer.proposals is not None:
        for i, (b, _) in zip(todo, describer.proposals.forward_batch([images[i] for i in todo])):
            boxes[i] = b.detach().cpu().numpy().astype(np.float32).reshape(-1, 4)
    return [b if b is not None else np.zeros((0, 4), np.float32) for b in boxes]


def matched_objects(describer, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray],
                    query_desc: np.ndarray) -> List[Tuple[Optional[np.ndarray], Optional[float]]]:
    """Per gallery image, the object whose crop (the describer's object-centred square crop) embeds closest to the
    query descriptor, and that cosine: (box, similarity); (None, None) for an image without objects. All crops go
    through the encoder together (``embed`` batches them)."""
    from ..models.retrievers.mao_components import crop_padded, square_crop_box
    crops, owner = [], []
    for i, (image, bs) in enumerate(zip(images, boxes)):
        for b in bs:
            crops.append(crop_padded(image, square_crop_box(b.tolist(), describer.min_crop_size)))
            owner.append(i)
    out: List[Tuple[Optional[np.ndarray], Optional[float]]] = [(None, None)] * len(images)
    if not crops:
        return out
    sims = describer.encoder.embed(crops).float().cpu().numpy() @ np.asarray(query_desc, dtype=np.float32)
    owner = np.asarray(owner)
    for i in range(len(images)):
        rows = np.flatnonzero(owner == i)
        if len(rows):
            best = rows[int(np.argmax(sims[rows]))]
            out[i] = (boxes[i][best - rows[0]], float(sims[best]))
    return out


def heatmaps_available(describer) -> bool:
    """Whether the describer's crop encoder can draw LeGrad maps (a ViT; EfficientNet-Lite cannot)."""
    return bool(getattr(describer.encoder, 'has_explainer', True))


def legrad_heatmaps(describer, images: Sequence[np.ndarray], query_desc: np.ndarray) -> List[np.ndarray]:
    """LeGrad maps (HxW in [0, 1], each image's own size) of the query descriptor on whole gallery images, with the
    LeGrad layers of the config's stage B (``refine.layers``; the last block without stage B), the encoder's
    ``batch_size`` images per pass."""
    import torch.nn.functional as F
    enc = describer.encoder
    refiner = getattr(describer, 'refiner', None)
    layers = getattr(refiner.explainer, 'layers_cfg', 'last') if refiner is not None else 'last'
    explainer = enc.explainer(layers=layers)
    t = torch.from_numpy(np.asarray(query_desc, dtype=np.float32))[None].to(enc.device)
    bs = int(getattr(enc, 'batch_size', 8) or 8)
    out = []
    for start in range(0, len(images), bs):
        chunk = list(images[start:start + bs])
        with torch.enable_grad():
            maps = explainer.maps(explainer.prepare(enc.preprocess(chunk)), t.expand(len(chunk), -1).contiguous())
        for m, image in zip(maps.detach().float(), chunk):
            out.append(F.interpolate(m[None, None], size=image.shape[:2], mode='bilinear',
                                     align_corners=False)[0, 0].cpu().numpy())
    return out


def build_search_visualizer(cfg=None, save_dir: Optional[str] = None):
    """The :class:`QVMaORetrievalVisualizer` of the config's ``visualizer`` when it is of that type (its
    ``vis_backends`` then receive the picture; ``save_dir`` defaults to ``save_dir``), else a default one."""
    from mmpretrain.registry import VISUALIZERS

    from ..visualization.mao_retrieval_visualizer import QVMaORetrievalVisualizer
    vcfg = dict((cfg.get('visualizer') if cfg is not None else None) or {})
    if vcfg.get('type') not in ('QVMaORetrievalVisualizer', QVMaORetrievalVisualizer):
        vcfg = dict()
    vcfg['type'] = QVMaORetrievalVisualizer   # the class itself: found whatever the current default scope
    if vcfg.get('vis_backends') and save_dir is not None:
        vcfg.setdefault('save_dir', save_dir)
    # a fresh instance (mmengine returns an existing one of the same name, with its old settings)
    vcfg.setdefault('name', f'qv_mao_search_{len(QVMaORetrievalVisualizer._instance_dict)}')
    return VISUALIZERS.build(vcfg)


def draw_search_grid(describer, query_image: np.ndarray, box: Sequence[float], query_desc: np.ndarray,
                     results: List[Tuple[str, float]], out_file: Optional[str], heatmaps: Optional[bool] = None,
                     cache_dir: Optional[str] = None, visualizer=None, name: str = 'mao_search') -> Optional[str]:
    """Query (box drawn) + ranked gallery images, each with its matched object box (:func:`matched_objects`) and
    overlaid with the LeGrad map of the query descriptor (:func:`legrad_heatmaps`), drawn by
    ``QVMaORetrievalVisualizer`` (``visualizer``, default :func:`build_search_visualizer`). ``out_file``: the PNG
    written; the visualizer's storage backends (if any) receive the picture too. ``heatmaps``: None = when the crop
    encoder has a LeGrad explainer (ViT encoders; not EfficientNet-Lite), True = always (a ``ValueError`` from a CNN
    encoder), False = never. Returns ``out_file``."""
    if heatmaps is None:
        heatmaps = heatmaps_available(describer)
    vis = visualizer if visualizer is not None else build_search_visualizer()
    images = [read_rgb(path) for path, _ in results]
    matched = matched_objects(describer, images, gallery_object_boxes(describer, images, [p for p, _ in results],
                                                                      cache_dir), query_desc)
    maps = legrad_heatmaps(describer, images, query_desc) if heatmaps and images else [None] * len(images)
    matches = [dict(image=image, img_path=path, score=score, box=b, box_score=bs, heatmap=m)
               for image, (path, score), (b, bs), m in zip(images, results, matched, maps)]
    drawn = vis.visualize_mao_retrieval(query_image, box, matches, out_file=out_file, name=name)
    if out_file is not None and drawn is not None:
        vis.add_image(name, drawn)    # the file for the tool, the config's backends (none by default) as well
    return out_file
