"""The real-photo demo set (QKS): photos found inside installed packages, training sees seen tags only, every unseen
label is tested, deterministic output, a clear error when a package is missing; and the demo config trains and tests
through the Runner on it (random CLIP saved and loaded as a local-dir, embeddings written by the real tool)."""
import hashlib
import json
import os.path as osp

import pytest
from PIL import Image

from conftest import REPO, load_module_from_path
from queryvision_mm.testing.demo_data import demo_photos

DEFAULT_SCOPE = 'mmpretrain'


def digest(root):
    files = sorted(p for p in root.rglob('*') if p.is_file() and p.name != '.complete')
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope='module')
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp('demo_qks')
    counts = demo_photos.generate_demo_qks(str(root), crops_train=2, crops_val=1, size=64)
    return root, counts


def test_photos_are_located_in_packages():
    paths = demo_photos.locate_photos()
    assert len(paths) == len(demo_photos.PHOTOS) and all(osp.isfile(p) for p in paths.values())
    with pytest.raises(KeyError, match="unknown demo photo 'lena'"):
        demo_photos.locate_photos(['lena'])


def test_missing_package_is_named(monkeypatch):
    monkeypatch.setattr(demo_photos.importlib.util, 'find_spec', lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"'skimage' is not installed.*pip install scikit-image"):
        demo_photos.locate_photos(['astronaut'])


def test_splits_and_labels(small_set):
    root, counts = small_set
    ann = {s: json.loads((root / f'annotations/{s}.json').read_text()) for s in ('train', 'val', 'test')}
    meta = ann['train']['metainfo']
    classes, n_seen = meta['classes'], meta['num_seen']
    assert classes == list(demo_photos.SEEN) + list(demo_photos.UNSEEN) and n_seen == len(demo_photos.SEEN)
    with_seen = [k for k, _, _, tags in demo_photos.PHOTOS if set(tags) & set(demo_photos.SEEN)]
    assert counts == dict(train=2 * len(with_seen), val=len(with_seen), test=2 * len(demo_photos.PHOTOS))
    for split in ('train', 'val'):
        assert all(x['gt_label'] and max(x['gt_label']) < n_seen for x in ann[split]['data_list'])
    assert not any('motorcycle' in x['img_path'] for x in ann['train']['data_list']), 'no seen tag -> no training'
    tested = {classes[j] for x in ann['test']['data_list'] for j in x['gt_label']}
    assert tested == set(classes), 'every label, seen and unseen, has test photos'
    astro = next(x for x in ann['test']['data_list'] if x['img_path'] == 'images/test/astronaut_full.jpg')
    assert sorted(classes[j] for j in astro['gt_label']) == ['flag', 'helmet', 'person', 'rocket']


def test_deterministic(small_set, tmp_path):
    root, _ = small_set
    demo_photos.generate_demo_qks(str(tmp_path), crops_train=2, crops_val=1, size=64)
    assert digest(tmp_path) == digest(root)


def test_demo_config_trains_and_tests(small_set):
    pytest.importorskip('open_clip')
    from mmengine.config import Config
    from mmengine.runner import Runner
    root, _ = small_set
    clip = demo_photos.make_random_clip(str(root / 'clip_random'))
    emb = str(root / 'label_embeddings_qks_pool.safetensors')
    tool = load_module_from_path('qv_make_emb_demo', osp.join(REPO, 'tools/misc/make_category_embeddings.py'))
    assert tool.main([str(root / 'labels_seen.txt'), str(root / 'labels_unseen.txt'), emb, '--model', clip,
                      '--templates', 'qks_pool']) in (0, None)
    cfg = Config.fromfile(osp.join(REPO, 'configs/qks/demo_photos.py'))
    assert cfg.model.backbone.model_name == 'local-dir:data/demo_qks/clip_random'
    cfg.model.backbone.model_name = clip
    cfg.model.head.embed_file = emb
    for key in ('train', 'val', 'test'):
        cfg[f'{key}_dataloader'].dataset.update(ann_file=str(root / f'annotations/{key}.json'), data_prefix=str(root))
    cfg.train_cfg.max_epochs = 2
    cfg.work_dir = str(root / 'work')
    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = runner.test()
    assert metrics['zsl/num_labels'] == len(demo_photos.UNSEEN) and metrics['seen/num_labels'] == len(demo_photos.SEEN)
    n_unseen_photos = sum(bool(set(t) & set(demo_photos.UNSEEN)) for *_, t in demo_photos.PHOTOS)
    assert metrics['zsl/num_images'] == 2 * n_unseen_photos


def test_mao_demo_gallery(tmp_path):
    from queryvision_mm.datasets import QVSoIRDataset
    counts = demo_photos.generate_demo_soir(str(tmp_path / 'a'))
    ds = QVSoIRDataset(str(tmp_path / 'a/annotations/anns.json'), data_prefix=str(tmp_path / 'a'), sets=('demo', ))
    items = [ds.get_data_info(i) for i in range(len(ds))]
    gallery = [x for x in items if not x['is_query']]
    assert counts == dict(gallery=12, queries=6) and len(gallery) == 12 and ds.metainfo['num_queries'] == 6
    for ins in range(len(demo_photos.SOIR_OBJECTS)):
        assert sum(ins in g['instances'] for g in gallery) >= 4
    assert sum(not g['instances'] for g in gallery) == 2, 'two gallery images without any object'
    for g in gallery:
        w, h = Image.open(g['img_path']).size
        for x0, y0, x1, y1 in g['gt_boxes']:
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and max(x1 - x0, y1 - y0) <= 40, 'small objects'
    demo_photos.generate_demo_soir(str(tmp_path / 'b'))
    assert digest(tmp_path / 'a') == digest(tmp_path / 'b')
