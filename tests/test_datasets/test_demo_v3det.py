"""The embedded mini V3Det set: official file formats, a cleaned-name collision kept apart by id, a multi-level DAG
hierarchy that CategoryHierarchy and mmdet's V3DetDataset read, determinism, and colours that carry no category cue by
default (issue 15: the CQ-DINO demo must work from shape) with the per-category hue kept as an option."""
import hashlib
import json
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from queryvision_mm.datasets import CategoryHierarchy
from queryvision_mm.testing.demo_data import DEMO_V3DET_CLASSES, generate_demo_v3det
from queryvision_mm.testing.demo_data import demo_v3det


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
    """'hue' mode: each category's own hue (within 4 degrees)."""
    rng = np.random.default_rng(0)
    import colorsys
    for cat in (0, 5, 13):
        r, g, b = demo_v3det.class_colour(rng, cat) / 255
        hue = colorsys.rgb_to_hsv(r, g, b)[0]
        d = abs(hue - cat / len(DEMO_V3DET_CLASSES))
        assert min(d, 1 - d) <= 4 / 360 + 1e-6


def test_random_colours_ignore_the_category():
    """'random' mode (the default): the same draw gives the same colour whatever the category, and the hues cover the
    colour wheel."""
    import colorsys
    hues = []
    for seed in range(40):
        fills = [demo_v3det.random_colour(np.random.default_rng(seed), cat) for cat in range(len(DEMO_V3DET_CLASSES))]
        assert all(np.array_equal(f, fills[0]) for f in fills)
        hues.append(colorsys.rgb_to_hsv(*(fills[0] / 255))[0])
    assert len(set(np.floor(np.array(hues) * 6).astype(int))) == 6, 'every sixth of the colour wheel is used'


# categories whose box centre lies on the shape whatever its rotation and jitter (the others have holes or arms)
SOLID = ('circle', 'ellipse', 'square', 'pentagon', 'hexagon', 'star (five-pointed)', 'star (six-pointed)', 'cross',
         'round shape')


def _hue_hits(paths):
    """Fraction of unoccluded solid shapes whose centre pixel has their category's 'hue'-mode hue (+-15 degrees)."""
    import colorsys
    coco = json.load(open(paths['train']))
    files = {im['id']: im['file_name'] for im in coco['images']}
    hits = total = 0
    for ann in coco['annotations']:
        name = DEMO_V3DET_CLASSES[ann['category_id'] - 1]
        x, y, w, h = ann['bbox']
        if name not in SOLID or ann['area'] < 0.5 * w * h:  # skip occluded shapes (their centre may be another's)
            continue
        with Image.open(osp.join(paths['data_root'], files[ann['image_id']])) as pic:
            rgb = np.asarray(pic.convert('RGB'))[int(y + h / 2), int(x + w / 2)] / 255
        d = abs(colorsys.rgb_to_hsv(*rgb)[0] - (ann['category_id'] - 1) / len(DEMO_V3DET_CLASSES))
        hits += min(d, 1 - d) <= 15 / 360
        total += 1
    assert total >= 15
    return hits / total


def test_default_images_carry_no_colour_cue_and_hue_mode_does(tmp_path, demo):
    """The shapes of the default set do not have their category's hue (chance: 30/360 ~ 0.08); those of
    colours='hue' do."""
    hue = generate_demo_v3det(str(tmp_path / 'hue'), num_train=40, num_val=0, image_size=96, colours='hue')
    rand = generate_demo_v3det(str(tmp_path / 'rand'), num_train=40, num_val=0, image_size=96)
    assert _hue_hits(hue) >= 0.8
    assert _hue_hits(rand) <= 0.25
    assert json.load(open(osp.join(rand['data_root'], demo_v3det.MARKER_NAME)))['colours'] == 'random'


def test_stale_or_other_colour_data_is_regenerated(tmp_path):
    """The marker holds the generator version and the colour mode: data of generator version 2 (per-category hue
    only) or of the other mode is rewritten, never reused."""
    paths = generate_demo_v3det(str(tmp_path / 'x'), num_train=3, num_val=1, image_size=64, colours='hue')
    marker = osp.join(paths['data_root'], demo_v3det.MARKER_NAME)
    hue_digest = _digest(osp.join(paths['data_root'], 'images'))
    generate_demo_v3det(str(tmp_path / 'x'), num_train=3, num_val=1, image_size=64)  # default: 'random'
    assert json.load(open(marker))['colours'] == 'random'
    assert _digest(osp.join(paths['data_root'], 'images')) != hue_digest
    stale = dict(json.load(open(marker)), generator_version=2)
    stale.pop('colours')  # what version 2 wrote
    with open(marker, 'w') as f:
        json.dump(stale, f)
    generate_demo_v3det(str(tmp_path / 'x'), num_train=3, num_val=1, image_size=64)
    assert json.load(open(marker))['generator_version'] == demo_v3det.GENERATOR_VERSION >= 3
    with pytest.raises(ValueError, match="colours must be one of"):
        generate_demo_v3det(str(tmp_path / 'y'), colours='rainbow')


def test_deterministic_and_idempotent(tmp_path, demo):
    again = generate_demo_v3det(str(tmp_path / 'x'), num_train=10, num_val=4, image_size=96)
    assert _digest(osp.join(again['data_root'], 'annotations')) == _digest(osp.join(demo['data_root'], 'annotations'))
    assert _digest(osp.join(again['data_root'], 'images')) == _digest(osp.join(demo['data_root'], 'images'))
    stamp = os.path.getmtime(again['train'])
    generate_demo_v3det(str(tmp_path / 'x'), num_train=10, num_val=4, image_size=96)
    assert os.path.getmtime(again['train']) == stamp, 'same parameters: nothing rewritten'
    with pytest.raises(ValueError, match='num_train'):
        generate_demo_v3det(str(tmp_path / 'y'), num_train=-1)
