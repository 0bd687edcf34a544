"""Tests for queryvision_mm/testing/demo_data/demo_shapes.py (numpy + Pillow only, no mmdet).

The module is loaded from its file path so that ``queryvision_mm/datasets/__init__.py`` (which may
import mmdet) is not executed.
"""
import json
import os
import os.path as osp
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from conftest import load_module_from_path

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
MODULE_PATH = osp.join(REPO_ROOT, 'queryvision_mm', 'testing', 'demo_data', 'demo_shapes.py')



ds = load_module_from_path('qv_demo_shapes_under_test', MODULE_PATH)
SMALL = dict(num_labeled=4, num_unlabeled=6, num_val=3, image_size=96, seed=3)
ANN_KEYS = ('labeled', 'unlabeled', 'val', 'train_full')


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return ds.generate_demo_shapes(str(tmp_path_factory.mktemp('demo_a')), **SMALL)


def load(path):
    with open(path) as f:
        return json.load(f)


def test_layout_and_fields(dataset):
    assert ds.DEMO_CLASSES == ('circle', 'square', 'triangle')
    counts = dict(labeled=4, unlabeled=6, val=3, train_full=10)
    all_img_ids = set()
    for key in ANN_KEYS:
        coco = load(dataset[key])
        assert [c['name'] for c in coco['categories']] == list(ds.DEMO_CLASSES)
        assert [c['id'] for c in coco['categories']] == [1, 2, 3]
        assert all(c['supercategory'] == 'shape' for c in coco['categories'])
        assert len(coco['images']) == counts[key]
        allowed = ('labeled', 'unlabeled') if key == 'train_full' else (key, )
        for img in coco['images']:
            assert img['file_name'].split('/')[0] in allowed and img['file_name'].endswith('.jpg')
            assert 0.85 * 96 - 1 <= img['width'] <= 96 and 0.85 * 96 - 1 <= img['height'] <= 96
        if key != 'train_full':
            all_img_ids |= {img['id'] for img in coco['images']}
    assert len(all_img_ids) == 13  # ids unique across splits
    full = load(dataset['train_full'])
    lab, unlab = load(dataset['labeled']), load(dataset['unlabeled'])
    assert full['images'] == lab['images'] + unlab['images']
    assert full['annotations'] == lab['annotations'] + unlab['annotations']


def test_boxes_inside_and_consistent(dataset):
    ann_ids = []
    for key in ('labeled', 'unlabeled', 'val'):
        coco = load(dataset[key])
        imgs = {img['id']: img for img in coco['images']}
        for img in coco['images']:
            with Image.open(osp.join(dataset['img_dir'], img['file_name'])) as im:
                assert im.format == 'JPEG'
                assert im.size == (img['width'], img['height'])
                im.convert('RGB').load()
        per_image = Counter(a['image_id'] for a in coco['annotations'])
        assert set(per_image) == set(imgs)  # every image has 1..5 shapes
        assert all(1 <= n <= 5 for n in per_image.values())
        for ann in coco['annotations']:
            ann_ids.append(ann['id'])
            img = imgs[ann['image_id']]
            x, y, w, h = ann['bbox']
            assert all(isinstance(v, int) for v in ann['bbox'])
            assert x >= 0 and y >= 0 and w >= 4 and h >= 4
            assert x + w <= img['width'] and y + h <= img['height']
            assert ann['category_id'] in (1, 2, 3) and ann['iscrowd'] == 0
            # tight box: the shape fills a plausible fraction of it (circle ~0.79, triangle ~0.5)
            assert w * h >= ann['area'] >= 0.2 * w * h
            assert w * h >= 0.9 * ann['area']
    assert len(ann_ids) == len(set(ann_ids))


def test_shapes_visible_in_pixels(dataset):
    """The box interior differs from the ring of background just outside it (the shape is drawn there)."""
    coco = load(dataset['val'])
    imgs = {img['id']: img for img in coco['images']}
    for ann in coco['annotations']:
        x, y, w, h = ann['bbox']
        with Image.open(osp.join(dataset['img_dir'], imgs[ann['image_id']]['file_name'])) as im:
            arr = np.asarray(im.convert('RGB'), dtype=np.float32)
        inner = arr[y + h // 3:y + h - h // 3, x + w // 3:x + w - w // 3].reshape(-1, 3)
        assert inner.std(axis=0).max() < 40  # centre of a filled shape is (nearly) uniform


def test_class_counts(tmp_path):
    paths = ds.generate_demo_shapes(str(tmp_path / 'cls'), num_labeled=8, num_unlabeled=0, num_val=0,
                                    image_size=64, seed=0)
    counts = Counter(a['category_id'] for a in load(paths['labeled'])['annotations'])
    assert all(counts[c] > 0 for c in (1, 2, 3))
    assert load(paths['unlabeled'])['images'] == []


def test_deterministic(dataset, tmp_path):
    other = ds.generate_demo_shapes(str(tmp_path / 'demo_b'), **SMALL)
    for key in ANN_KEYS:
        with open(dataset[key], 'rb') as a, open(other[key], 'rb') as b:
            assert a.read() == b.read()
    for img in load(dataset['train_full'])['images'] + load(dataset['val'])['images']:
        with Image.open(osp.join(dataset['img_dir'], img['file_name'])) as a, \
                Image.open(osp.join(other['img_dir'], img['file_name'])) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b))
    different = ds.generate_demo_shapes(str(tmp_path / 'demo_c'), **dict(SMALL, seed=4))
    with open(dataset['val'], 'rb') as a, open(different['val'], 'rb') as b:
        assert a.read() != b.read()


def test_idempotent_and_overwrite(tmp_path):
    kwargs = dict(num_labeled=2, num_unlabeled=2, num_val=1, image_size=(72, 64), seed=1)
    paths = ds.generate_demo_shapes(str(tmp_path), **kwargs)
    files = [paths[k] for k in ANN_KEYS] + [osp.join(paths['img_dir'], 'val', f) for f in
                                          os.listdir(osp.join(paths['img_dir'], 'val'))]
    old = 1_000_000_000
    for f in files:
        os.utime(f, (old, old))
    assert ds.generate_demo_shapes(str(tmp_path), **kwargs) == paths
    assert all(os.stat(f).st_mtime == old for f in files)
    # different parameters regenerate (stale images are removed)
    ds.generate_demo_shapes(str(tmp_path), **dict(kwargs, num_val=2))
    assert len(os.listdir(osp.join(paths['img_dir'], 'val'))) == 2
    ds.generate_demo_shapes(str(tmp_path), **dict(kwargs, num_val=1))
    assert len(os.listdir(osp.join(paths['img_dir'], 'val'))) == 1
    # overwrite forces a rewrite
    for f in files[:1]:
        os.utime(f, (old, old))
    ds.generate_demo_shapes(str(tmp_path), overwrite=True, **kwargs)
    assert os.stat(files[0]).st_mtime != old


def test_cli_main(tmp_path, capsys):
    out = tmp_path / 'cli'
    assert ds.main(['--out-dir', str(out), '--num-labeled', '1', '--num-unlabeled', '1', '--num-val', '1',
                    '--size', '64', '48', '--seed', '2']) == 0
    assert 'instances_val.json' in capsys.readouterr().out
    img = load(out / 'annotations' / 'instances_val.json')['images'][0]
    assert img['width'] <= 64 and img['height'] <= 48


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        ds.generate_demo_shapes(str(tmp_path), num_labeled=-1)
    with pytest.raises(ValueError):
        ds.generate_demo_shapes(str(tmp_path), image_size=(10, 10, 3))
