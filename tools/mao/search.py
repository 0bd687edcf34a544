#!/usr/bin/env python
"""MaO: search an index built by ``tools/mao/extract.py`` with one query object; write a PNG grid with heatmaps.

    python tools/mao/search.py CONFIG QUERY_IMAGE --box X0 Y0 X1 Y1 [--index WORK_DIR/index] [--topk 5]
        [--out search.png] [--heatmaps | --no-heatmaps]

Prints the ranked gallery images with their cosine scores; the grid (drawn by ``QVMaORetrievalVisualizer``, an
mmpretrain ``UniversalVisualizer``) shows the query (box in green) and the top-K gallery images, each with its score,
the gallery object that matches the query best (red box, that object's cosine) and the LeGrad map of the query
descriptor overlaid (where in each image the match comes from). A config ``visualizer`` of type
``QVMaORetrievalVisualizer`` with ``vis_backends`` (``LocalVisBackend``, ``TensorboardVisBackend``, ...; save_dir
defaults to WORK_DIR) also receives the picture.

Index flags: [--nprobe N] [--ef-search N] [--k-factor N] [--cpu] [--cfg-options index.type=hnsw ...]. The index was
built by ``extract.py`` with the config's ``index`` settings (exact ``type='flat'`` unless the config or its
``--cfg-options index.type=...`` says otherwise); loading checks that the config still asks for the same build
settings. ``--nprobe`` (IVF), ``--ef-search`` (HNSW) and ``--k-factor`` (re-ranking) change search-time settings;
``--cpu`` searches with faiss-cpu even when the config sets ``index.use_gpu``.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from _bootstrap import import_queryvision_mm  # noqa: E402


def index_settings(index_cfg, nprobe=None, ef_search=None, k_factor=None, cpu=False) -> dict:
    """The config's ``index`` dict with the command line's search-time settings (``DescriptorIndex.load`` checks the
    build settings against the saved index and applies these)."""
    out = dict(index_cfg or {})
    for key, val in (('nprobe', nprobe), ('efSearch', ef_search), ('k_factor', k_factor)):
        if val is not None:
            out[key] = val
    if cpu:
        out['use_gpu'] = False
    return out


def main(argv=None):
    from mmengine.config import Config, DictAction
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('query')
    p.add_argument('--box', type=float, nargs=4, required=True, metavar=('X0', 'Y0', 'X1', 'Y1'))
    p.add_argument('--index', default=None, help='default: WORK_DIR/index of the config')
    p.add_argument('--topk', type=int, default=5)
    p.add_argument('--out', default=None, help='PNG grid (default: WORK_DIR/search_<query name>.png)')
    hm = p.add_mutually_exclusive_group()
    hm.add_argument('--heatmaps', dest='heatmaps', action='store_true', default=None,
                    help='LeGrad maps on the grid (default: when the crop encoder is a ViT; an error with a CNN)')
    hm.add_argument('--no-heatmaps', dest='heatmaps', action='store_false')
    p.add_argument('--nprobe', type=int, default=None, help='IVF lists visited per query (search-time)')
    p.add_argument('--ef-search', type=int, default=None, help='HNSW search breadth (search-time)')
    p.add_argument('--k-factor', type=int, default=None, help='candidates re-ranked = k-factor x topk (refine)')
    p.add_argument('--cpu', action='store_true', help='search with faiss-cpu even if index.use_gpu is set')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    p.add_argument('--device', default=None, help='cpu | cuda | cuda:N | auto (every model of the describer)')
    args = p.parse_args(argv)
    import_queryvision_mm()
    from mmengine.registry import DefaultScope

    from queryvision_mm.apis.mao import (build_search_visualizer, draw_search_grid, heatmaps_available, read_rgb,
                                         search)
    from queryvision_mm.utils.cli import default_work_dir
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.index = index_settings(cfg.get('index'), args.nprobe, args.ef_search, args.k_factor, args.cpu)
    if args.device:
        from queryvision_mm.apis.mao_extract import set_describer_options
        set_describer_options(cfg, device=args.device)
    work_dir = cfg.get('work_dir') or default_work_dir(args.config)
    DefaultScope.get_instance('qv_mao_search', scope_name=cfg.get('default_scope', 'mmpretrain'))
    index_dir = args.index or osp.join(work_dir, 'index')
    describer, q, results = search(cfg, index_dir, args.query, args.box, args.topk)
    for rank, (path, score) in enumerate(results, 1):
        print(f'{rank:3d}  {score:.4f}  {path}')
    name = f'search_{osp.splitext(osp.basename(args.query))[0]}'
    out = args.out or osp.join(work_dir, f'{name}.png')
    # the gallery's object boxes from the extraction cache beside the index (OWLv2 is run when it is absent)
    if args.heatmaps is None and not heatmaps_available(describer):
        print(f'no heatmaps: {type(describer.encoder).__name__} has no LeGrad explainer (a CNN)')
    draw_search_grid(describer, read_rgb(args.query), args.box, q, results, out, heatmaps=args.heatmaps,
                     cache_dir=osp.join(osp.dirname(osp.abspath(index_dir)), 'gallery_cache'),
                     visualizer=build_search_visualizer(cfg, save_dir=work_dir), name=name)
    print(f'grid: {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
