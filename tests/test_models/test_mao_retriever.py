"""``QVMaORetriever`` (mmpretrain ``BaseRetriever``) on the MaO photo demo set with tiny saved models: mmpretrain's
``ImageRetrievalInferencer`` returns the same top-k gallery images as ``apis.mao.search`` on the index of
``apis.mao.run_extract``; ``tools/test.py`` runs the config (mAP / Recall@K from ``pred_score`` + ``gt_label``, equal
to run_extract's);
prototype stores (dataloader, index folder with fingerprint / order checks, ``.pth`` dump); the data preprocessor."""
import os.path as osp
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from conftest import REPO
from test_mao_pipeline import SAM_ARCH, models  # noqa: F401  (module fixture)

DEFAULT_SCOPE = 'mmpretrain'


@pytest.fixture(scope='module')
def demo(models, tmp_path_factory):  # noqa: F811
    """The demo gallery (12 photos, 6 queries), a config inheriting configs/mao/demo_photos_retriever.py with the
    tiny models, and the index + results of apis.mao.run_extract (tools/mao/extract.py) on it."""
    from queryvision_mm.apis.mao import run_extract
    from queryvision_mm.testing.demo_data.demo_photos import generate_demo_soir
    mroot, clip = models
    root = tmp_path_factory.mktemp('mao_retriever')
    generate_demo_soir(str(root / 'demo'))
    cfg_file = root / 'retriever.py'
    cfg_file.write_text(f"""_base_ = {osp.join(REPO, 'configs/mao/demo_photos_retriever.py')!r}
root = {str(root / 'demo') + '/'!r}
work_dir = {str(root / 'work')!r}
describer = dict(encoder=dict(model_name={clip!r}), proposals=dict(model_dir={str(mroot / 'owlv2')!r}, max_objects=2),
                 masks=dict(checkpoint={str(mroot / 'sam.pth')!r}, arch={SAM_ARCH!r}), refine=dict(iters=2))
soir = dict(ann_file=root + 'annotations/anns.json', data_prefix=root)
dataset = dict(ann_file=root + 'annotations/anns.json', data_prefix=root)
gallery_dataloader = dict(dataset=soir)
test_dataloader = dict(dataset=soir)
model = dict(describer=describer, prototype=dict(dataset=soir), prototype_cache=work_dir + '/index')
""")
    cfg = Config.fromfile(str(cfg_file))
    results = run_extract(cfg, str(root / 'extract'), progress=False)
    return root, cfg_file, cfg, results


def query_items(cfg):
    from mmpretrain.registry import DATASETS
    ds = DATASETS.build(dict(cfg.test_dataloader.dataset))
    return [ds.get_data_info(i) for i in range(len(ds))]


def test_inferencer_returns_the_apis_search_results(demo, tmp_path):
    from mmpretrain import ImageRetrievalInferencer

    from queryvision_mm.apis.mao import search
    from queryvision_mm.models.retrievers import crop_padded, square_crop_box
    from queryvision_mm.utils.image_io import read_rgb
    root, _, cfg, _ = demo
    cfg = cfg.copy()
    cfg.model.prototype_cache = None           # the retriever describes the gallery itself (stage B)
    inferencer = ImageRetrievalInferencer(cfg, prototype=cfg.gallery_dataloader.dataset.to_dict(), pretrained=False)
    for q in query_items(cfg)[::2]:
        _, _, ranked = search(cfg, str(root / 'extract/index'), q['img_path'], q['query_box'], topk=5)
        crop = crop_padded(read_rgb(q['img_path']), square_crop_box(q['query_box'], 0))   # the official query crop
        png = str(tmp_path / (osp.basename(q['img_path']) + '.png'))
        Image.fromarray(crop).save(png)
        matches = inferencer(png, topk=5)[0]
        assert [m['sample']['img_path'] for m in matches] == [p for p, _ in ranked]
        np.testing.assert_allclose([float(m['match_score']) for m in matches], [s for _, s in ranked], atol=1e-5)
    # the retriever's own search API, with the box, on the same prototype
    got, _ = inferencer.model.search(read_rgb(q['img_path']), q['query_box'], topk=5)
    assert [p for p, _ in got] == [p for p, _ in ranked]


def test_tools_test_py_runs_the_retriever_config(demo):
    """tools/test.py CONFIG none: queries of the test split (with their boxes) ranked against the index written by
    tools/mao/extract.py (prototype_cache); mAP / R@1 from pred_score + gt_label equal apis.mao.run_extract's."""
    root, cfg_file, _, results = demo
    out = subprocess.run([sys.executable, osp.join(REPO, 'tools/test.py'), str(cfg_file), 'none', '--work-dir',
                          str(root / 'test'), '--cfg-options', f'model.prototype_cache={root / "extract/index"}'],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    m_ap = float(re.search(r'retrieval/mAP: ([0-9.]+)', log).group(1))
    r1 = float(re.search(r'retrieval/R@1: ([0-9.]+)', log).group(1))
    assert m_ap == pytest.approx(results['mAP'], abs=1e-3) and r1 == pytest.approx(results['R@1'], abs=1e-3)


def test_prototype_stores_and_checks(demo, tmp_path):
    from mmpretrain.registry import MODELS

    from queryvision_mm.utils.descriptor_index import DescriptorIndex
    root, _, cfg, _ = demo
    index_dir = str(root / 'extract/index')
    model = MODELS.build(dict(cfg.model, prototype=index_dir))
    model.prepare_prototype()
    ref = DescriptorIndex.load(index_dir)
    assert model.prototype_index.paths == ref.paths
    # the .pth dump (mmpretrain's format) reloads as a prototype with the same rankings
    model.dump_prototype(str(tmp_path / 'proto.pth'))
    q = torch.nn.functional.normalize(torch.randn(3, ref.dim), dim=-1)
    from_file = MODELS.build(dict(cfg.model, prototype=str(tmp_path / 'proto.pth')))
    from_file.prepare_prototype()
    assert all((a == b).all() for a, b in zip(from_file.matching(q)['pred_label'], model.matching(q)['pred_label']))
    # an index written with other describer settings is refused
    other = MODELS.build(dict(cfg.model, prototype=index_dir, describer=dict(cfg.model.describer,
                                                                              refine=dict(iters=3))))
    with pytest.raises(ValueError, match='another describer configuration'):
        other.prepare_prototype()
    # a cache whose gallery order differs from the prototype dataset is refused
    shuffled = DescriptorIndex(ref.dim)
    vecs = ref.cpu_index.reconstruct_n(0, len(ref))
    shuffled.add(vecs[::-1], ref.paths[::-1])
    shuffled.meta = dict(ref.meta)
    shuffled.save(str(tmp_path / 'shuffled'))
    cached = MODELS.build(dict(cfg.model, prototype_cache=str(tmp_path / 'shuffled')))
    with pytest.raises(ValueError, match='other gallery images'):
        cached.prepare_prototype()
    with pytest.raises(FileNotFoundError, match='prototype not found'):
        MODELS.build(dict(cfg.model, prototype=str(tmp_path / 'nothing'))).prepare_prototype()
    with pytest.raises(NotImplementedError, match='QVMaOContrastiveModel'):
        model(None, mode='loss')


def test_data_preprocessor_keeps_sizes_and_makes_rgb():
    from queryvision_mm.models.retrievers import QVMaODataPreprocessor
    pre = QVMaODataPreprocessor()
    bgr = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    small = torch.from_numpy(bgr[:10, :12].transpose(2, 0, 1).copy())
    out = pre(dict(inputs=[torch.from_numpy(bgr.transpose(2, 0, 1).copy()), small], data_samples=None))
    assert [a.shape for a in out['inputs']] == [(20, 30, 3), (10, 12, 3)]
    assert np.array_equal(out['inputs'][0], bgr[..., ::-1])
    stacked = pre(dict(inputs=small[None], data_samples=None))['inputs']
    assert len(stacked) == 1 and np.array_equal(stacked[0], bgr[:10, :12, ::-1])
    with pytest.raises(ValueError, match='3xHxW uint8'):
        pre(dict(inputs=[small.float()]))


def test_ranked_metric_matches_the_official_definition():
    """Full rankings: as ``retrieval_metrics`` (official calculate_map); a truncated ranking (-inf beyond the top k)
    counts relevant items outside it as not retrieved; a query without relevant items has AP 0."""
    from mmpretrain.structures import DataSample

    from queryvision_mm.evaluation.metrics import QVRankedRetrievalMetric, retrieval_metrics
    rng = np.random.default_rng(0)
    scores = rng.random((5, 9)).astype(np.float32)
    rel = rng.random((5, 9)) < 0.3
    rel[4] = False
    metric = QVRankedRetrievalMetric(topk=(1, 3))
    samples = [DataSample().set_pred_score(torch.from_numpy(s)).set_gt_label(torch.from_numpy(np.flatnonzero(r)))
               for s, r in zip(scores, rel)]
    metric.process(None, [s.to_dict() for s in samples])
    got = metric.compute_metrics(metric.results)
    ref = retrieval_metrics(np.argsort(-scores, axis=1, kind='stable'), rel, (1, 3))
    for key in ('mAP', 'R@1', 'R@3', 'queries_without_relevant'):
        assert got[key] == pytest.approx(ref[key], abs=1e-9), key
    metric = QVRankedRetrievalMetric(topk=(1, ))
    truncated = torch.tensor([0.9, float('-inf'), 0.5, float('-inf')])
    metric.process(None, [DataSample().set_pred_score(truncated).set_gt_label(torch.tensor([2, 3])).to_dict()])
    assert metric.compute_metrics(metric.results)['mAP'] == pytest.approx(100 * (1 / 2) / 2)


def test_apis_rankings_equal_the_retrievers_own(demo):
    """apis.mao.run_extract (tools/mao/extract.py: cached batched gallery, batched queries) and QVMaORetriever through
    mmpretrain's data path (LoadImageFromFile + PackInputs + QVMaODataPreprocessor, the retriever describing the
    gallery itself, queries predicted 4 per batch) rank the demo gallery identically for every query."""
    from mmengine.dataset import pseudo_collate

    from mmpretrain.registry import DATASETS, MODELS
    _, _, cfg, results = demo
    model = MODELS.build(dict(cfg.model, prototype_cache=None))
    ds = DATASETS.build(dict(cfg.test_dataloader.dataset))
    ranked = {}
    for start in range(0, len(ds), 4):
        data = model.data_preprocessor(pseudo_collate([ds[i] for i in range(start, min(start + 4, len(ds)))]))
        for sample in model.predict(data['inputs'], data['data_samples']):
            ranked[sample.img_path] = [model.prototype_index.paths[j] for j in sample.pred_label[:10].tolist()]
    assert len(ranked) == results['num_queries'] == 6
    assert ranked == results['rankings']


def test_run_extract_embeds_queries_in_batches(demo, tmp_path, monkeypatch):
    """The queries go through the encoder several per forward (the describer's batch_size, as the gallery), not one
    at a time; the gallery comes from the cache, so every encoder call here is a query batch."""
    import shutil

    from queryvision_mm.apis.mao import run_extract
    from queryvision_mm.models.retrievers import mao_components
    root, _, cfg, results = demo
    work = tmp_path / 'extract'
    shutil.copytree(root / 'extract' / 'gallery_cache', work / 'gallery_cache')
    sizes = []
    real = mao_components._CropEncoder.embed

    def counting(self, images, batch_size=None):
        sizes.append(len(images))
        return real(self, images, batch_size)

    monkeypatch.setattr(mao_components._CropEncoder, 'embed', counting)
    again = run_extract(cfg, str(work), progress=False)
    assert again['cached'] == 12 and again['computed'] == 0
    assert sizes == [6], f'query embeddings per encoder call: {sizes}'
    assert again['rankings'] == results['rankings'] and again['mAP'] == pytest.approx(results['mAP'])


def test_search_tool_draws_through_the_visualizer(demo, tmp_path, monkeypatch):
    """tools/mao/search.py: the same ranking as the index, the picture at --out drawn by QVMaORetrievalVisualizer with
    the query box, each match's best gallery object (one of its cached OWLv2 boxes; OWLv2 is not run again) and a
    LeGrad heatmap of the image's size."""
    import json

    from conftest import load_module_from_path
    from queryvision_mm.apis.mao import search
    from queryvision_mm.models.retrievers.mao_components import QVOWLv2Objectness
    from queryvision_mm.visualization.mao_retrieval_visualizer import QVMaORetrievalVisualizer
    root, cfg_file, cfg, _ = demo
    q = query_items(cfg)[1]
    index = str(root / 'extract' / 'index')
    calls = []
    real = QVMaORetrievalVisualizer.visualize_mao_retrieval

    def spy(self, query_image, query_box, matches, **kw):
        calls.append((query_box, list(matches)))
        return real(self, query_image, query_box, matches, **kw)

    def no_owlv2(*args, **kwargs):
        raise AssertionError('OWLv2 run although the extraction cache holds the boxes')

    monkeypatch.setattr(QVMaORetrievalVisualizer, 'visualize_mao_retrieval', spy)
    monkeypatch.setattr(QVOWLv2Objectness, 'forward_batch', no_owlv2)
    tool = load_module_from_path('qv_tools_mao_search', osp.join(REPO, 'tools/mao/search.py'))
    out = tmp_path / 'pics' / 'grid.png'
    assert tool.main([str(cfg_file), q['img_path'], '--box', *[str(v) for v in q['query_box']], '--index', index,
                      '--topk', '3', '--out', str(out)]) == 0
    _, _, ranked = search(cfg, index, q['img_path'], q['query_box'], topk=3)
    (box, matches), = calls
    assert list(box) == list(q['query_box']) and [m['img_path'] for m in matches] == [p for p, _ in ranked]
    cached = json.loads((root / 'extract' / 'proposals.json').read_text())
    assert any(m['box'] is not None for m in matches)
    for m in matches:
        assert m['heatmap'].shape == m['image'].shape[:2] and 0 <= m['heatmap'].min() <= m['heatmap'].max() <= 1
        if m['box'] is not None:
            assert any(np.allclose(m['box'], b) for b in cached[m['img_path']]) and -1.001 <= m['box_score'] <= 1.001
        else:
            assert not cached[m['img_path']]
    vis = QVMaORetrievalVisualizer(name='size-only')
    width = sum(vis.panel_size(s)[1] for s in [Image.open(q['img_path']).size[::-1]] +
                [m['image'].shape for m in matches]) + vis.gap * 3
    assert Image.open(out).size == (width, vis.panel_height)


def test_tools_read_the_describer_of_a_retriever_model():
    """A config whose ``model`` is a QVMaORetriever (no top-level ``describer``): the tools index and override the
    retriever's describer, not the retriever."""
    from queryvision_mm.apis.mao import describer_cfg
    from queryvision_mm.apis.mao_extract import set_describer_options
    cfg = Config(dict(model=dict(type='QVMaORetriever', describer=dict(type='QVMaODescriber', encoder=dict()))))
    assert describer_cfg(cfg).type == 'QVMaODescriber'
    set_describer_options(cfg, device='cpu', batch_size=2)
    assert cfg.model.describer.device == 'cpu' and cfg.model.describer.batch_size == 2
    assert 'device' not in cfg.model and 'batch_size' not in cfg.model
