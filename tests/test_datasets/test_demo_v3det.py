"""The embedded mini V3Det set: official file formats, a cleaned-name collision kept apart by id, a multi-level DAG
hierarchy that CategoryHierarchy and mmdet's V3DetDataset read, determinism."""
import hashlib
import json
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from queryvision_mm.datasets import CategoryHierarchy, DEMO_V3DET_CLASSES, generate_demo_v3det
from queryvision_mm.datasets import demo_v3det


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    return generate_demo_v3det(str(tmp_path_factory.mktemp('dv3')), num_train=10, num_val=4, image_size=96)


def _digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            with open(osp.join(dirpath, f), 'rb') as fh:
                h.update(f.encode() + fh.read())
    return h.hexdigest()


def test_files_and_formats(demo):
    with open(demo['label_file']) as f:
        assert f.read().splitlines() == list(DEMO_V3DET_CLASSES)
    tree = json.load(open(demo['tree_file']))
    for key in ('categoryid2treeid', 'id2name', 'father2child', 'child2father', 'ancestor2descendant',
                'descendant2ancestor'):
        assert key in tree, key
    coco = json.load(open(demo['train']))
    assert [c['id'] for c in coco['categories']] == list(range(1, len(DEMO_V3DET_CLASSES) + 1))
    for im in coco['images']:
        assert im['file_name'].startswith('images/n') and osp.isfile(osp.join(demo['data_root'], im['file_name']))
        with Image.open(osp.join(demo['data_root'], im['file_name'])) as pic:
            assert pic.size == (im['width'], im['height'])
    for ann in coco['annotations']:
        x, y, w, h = ann['bbox']
        assert w >= 4 and h >= 4 and ann['area'] <= w * h


def test_name_collision_is_real_and_ids_stay_distinct(demo):
    cleaned = [demo_v3det.clean_name(n) for n in DEMO_V3DET_CLASSES]
    assert len(set(cleaned)) == len(cleaned) - 1, 'exactly one pair collides once cleaned (the two stars)'
    a, b = DEMO_V3DET_CLASSES.index('star (five-pointed)'), DEMO_V3DET_CLASSES.index('star (six-pointed)')
    assert cleaned[a] == cleaned[b] == 'star'
    tree = json.load(open(demo['tree_file']))
    assert tree['categoryid2treeid'][str(a + 1)] != tree['categoryid2treeid'][str(b + 1)]
    # name-based lookup (the official code) would send both to the first one; ours keeps the ids
    assert cleaned.index('star') == a != b


def test_hierarchy_reads_as_a_multi_level_dag(demo):
    h = CategoryHierarchy.from_v3det_tree(demo['tree_file'], list(range(1, len(DEMO_V3DET_CLASSES) + 1)))
    idx = {n: i for i, n in enumerate(DEMO_V3DET_CLASSES)}
    star = idx['star (six-pointed)']
    assert h.parents[star] == [idx['polygon']], 'the non-category node "symbol" is walked through'
    assert sorted(h.children[idx['round shape']]) == sorted(idx[n] for n in ('circle', 'ellipse', 'ring',
                                                                             'crescent'))
    assert h.level[idx['polygon']] == 0 and h.level[star] == 1
    assert h.num_descendants[idx['polygon']] == 6
    tree = json.load(open(demo['tree_file']))
    assert len(tree['child2father'][tree['categoryid2treeid'][str(star + 1)]]) == 2, 'two parents (DAG)'


def test_v3det_dataset_reads_it(demo):
    from mmdet.datasets import V3DetDataset
    ds = V3DetDataset(data_root=demo['data_root'], ann_file=osp.relpath(demo['train'], demo['data_root']),
                      label_file=demo_v3det.LABEL_FILE, data_prefix=dict(img=''), pipeline=[], test_mode=True)
    assert ds.metainfo['classes'] == DEMO_V3DET_CLASSES
    coco = json.load(open(demo['train']))
    first = ds.get_data_info(0)
    labels = sorted(i['bbox_label'] for i in first['instances'])
    img_id = first['img_id']
    assert labels == sorted(a['category_id'] - 1 for a in coco['annotations'] if a['image_id'] == img_id)


def test_class_colour_cue():
    rng = np.random.default_rng(0)
    import colorsys
    for cat in (0, 5, 13):
        r, g, b = demo_v3det.class_colour(rng, cat) / 255
        hue = colorsys.rgb_to_hsv(r, g, b)[0]
        d = abs(hue - cat / len(DEMO_V3DET_CLASSES))
        assert min(d, 1 - d) <= 4 / 360 + 1e-6


def test_deterministic_and_idempotent(tmp_path, demo):
    again = generate_demo_v3det(str(tmp_path / 'x'), num_train=10, num_val=4, image_size=96)
    assert _digest(osp.join(again['data_root'], 'annotations')) == _digest(osp.join(demo['data_root'], 'annotations'))
    assert _digest(osp.join(again['data_root'], 'images')) == _digest(osp.join(demo['data_root'], 'images'))
    stamp = os.path.getmtime(again['train'])
    generate_demo_v3det(str(tmp_path / 'x'), num_train=10, num_val=4, image_size=96)
    assert os.path.getmtime(again['train']) == stamp, 'same parameters: nothing rewritten'
    with pytest.raises(ValueError, match='num_train'):
        generate_demo_v3det(str(tmp_path / 'y'), num_train=-1)
