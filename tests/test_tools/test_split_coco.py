"""Tests for tools/dataset_converters/split_coco.py (stdlib + numpy only, no mmdet)."""
import json
import os.path as osp
import sys

import numpy as np
import pytest

from conftest import load_module_from_path

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SCRIPT = osp.join(REPO_ROOT, 'tools', 'dataset_converters', 'split_coco.py')



sc = load_module_from_path('qv_tools_split_coco', SCRIPT)


def make_coco(num_images=50, anns_per_image=3):
    images = [dict(id=1000 + i, file_name=f'{i:012d}.jpg', width=64, height=48) for i in range(num_images)]
    annotations = []
    for img in images:
        for j in range(img['id'] % (anns_per_image + 1)):  # 0..anns_per_image boxes per image
            annotations.append(
                dict(id=len(annotations) + 1, image_id=img['id'], category_id=1 + j % 2, bbox=[1, 2, 3, 4],
                     area=12, iscrowd=0))
    return dict(
        info=dict(description='toy'),
        licenses=[dict(id=1, name='toy')],
        images=images,
        annotations=annotations,
        categories=[dict(id=1, name='a', supercategory='x'), dict(id=2, name='b', supercategory='x')])


def ids(coco):
    return [img['id'] for img in coco['images']]


def test_deterministic_per_seed():
    coco = make_coco()
    a = sc.split_coco(coco, 10, seed=1)
    b = sc.split_coco(coco, 10, seed=1)
    assert json.dumps(a) == json.dumps(b)


def test_different_folds_differ():
    coco = make_coco(200)
    splits = [ids(sc.split_coco(coco, 10, seed=fold)[0]) for fold in range(1, 6)]
    assert len({tuple(s) for s in splits}) == len(splits)


@pytest.mark.parametrize('percent,expected', [(10, 5), (1, 1), (0.5, 1), (50, 25), (100, 50), (13, 6)])
def test_exact_count_without_replacement(percent, expected):
    coco = make_coco(50)
    labeled, unlabeled = sc.split_coco(coco, percent, seed=3, mode='ours')
    lab_ids = ids(labeled)
    assert len(lab_ids) == len(set(lab_ids)) == expected
    assert len(ids(unlabeled)) == 50 - expected


def test_partition_and_annotations_follow_images():
    coco = make_coco(80)
    labeled, unlabeled = sc.split_coco(coco, 25, seed=7)
    lab, unlab = set(ids(labeled)), set(ids(unlabeled))
    assert lab.isdisjoint(unlab)
    assert lab | unlab == set(ids(coco))
    # images keep their original order
    order = {i: k for k, i in enumerate(ids(coco))}
    assert ids(labeled) == sorted(ids(labeled), key=order.get)
    assert all(a['image_id'] in lab for a in labeled['annotations'])
    assert all(a['image_id'] in unlab for a in unlabeled['annotations'])
    got = sorted(a['id'] for a in labeled['annotations'] + unlabeled['annotations'])
    assert got == sorted(a['id'] for a in coco['annotations'])


def test_metadata_copied():
    coco = make_coco(20)
    for part in sc.split_coco(coco, 10, seed=1):
        assert part['categories'] == coco['categories']
        assert part['info'] == coco['info']
        assert part['licenses'] == coco['licenses']
    del coco['licenses'], coco['info']
    for part in sc.split_coco(coco, 10, seed=1):
        assert 'licenses' not in part and 'info' not in part
        assert part['categories'] == coco['categories']


@pytest.mark.parametrize('percent', [0, -1, 100.5, float('nan'), 'abc'])
def test_bad_percent(percent):
    with pytest.raises(ValueError, match='percent'):
        sc.split_coco(make_coco(10), percent, seed=1)


def test_missing_images_field():
    with pytest.raises(ValueError, match="my.json.*'images'"):
        sc.split_coco(dict(annotations=[]), 10, seed=1, source='my.json')


def test_format_percent():
    assert sc.format_percent(10) == '10'
    assert sc.format_percent(10.0) == '10'
    assert sc.format_percent(0.5) == '0.5'
    assert sc.format_percent(12.5) == '12.5'


def test_cli_writes_mmdet_names(tmp_path, capsys):
    coco = make_coco(40)
    (tmp_path / 'annotations').mkdir()
    with open(tmp_path / 'annotations' / 'instances_train2017.json', 'w') as f:
        json.dump(coco, f)
    rc = sc.main(['--data-root', str(tmp_path), '--labeled-percent', '10', '0.5', '--fold', '2', '--mode', 'ours'])
    assert rc == 0
    out_dir = tmp_path / 'semi_anns'
    expected = {f'instances_train2017.{f}@{p}{s}.json' for f in (1, 2) for p in ('10', '0.5') for s in ('', '-unlabeled')}
    assert {p.name for p in out_dir.iterdir()} == expected
    lab = json.load(open(out_dir / 'instances_train2017.1@10.json'))
    unlab = json.load(open(out_dir / 'instances_train2017.1@10-unlabeled.json'))
    assert len(lab['images']) == 4 and len(unlab['images']) == 36
    # fold f uses seed f (+ offset 0)
    ref_lab, _ = sc.split_coco(coco, 10, seed=1, mode='ours')
    assert lab == ref_lab
    assert len(json.load(open(out_dir / 'instances_train2017.2@0.5.json'))['images']) == 1
    assert capsys.readouterr().out.count('\n') == 4  # one summary line per split

    # --seed-offset shifts the seed
    out2 = tmp_path / 'offset'
    assert sc.main(['--data-root', str(tmp_path), '--out-dir', str(out2), '--labeled-percent', '10', '--fold', '1',
                    '--seed-offset', '4', '--mode', 'ours']) == 0
    assert json.load(open(out2 / 'instances_train2017.1@10.json')) == sc.split_coco(coco, 10, seed=5, mode='ours')[0]


def test_missing_file(tmp_path, capsys):
    missing = tmp_path / 'annotations' / 'nope.json'
    with pytest.raises(FileNotFoundError, match='nope.json'):
        sc.split_coco_file(str(missing), str(tmp_path / 'out'))
    rc = sc.main(['--data-root', str(tmp_path), '--ann-file', 'annotations/nope.json'])
    assert rc != 0
    assert str(missing) in capsys.readouterr().err


def test_cli_bad_percent_and_bad_json(tmp_path, capsys):
    path = tmp_path / 'instances_train2017.json'
    with open(path, 'w') as f:
        json.dump(dict(annotations=[]), f)
    assert sc.main(['--data-root', str(tmp_path), '--ann-file', path.name, '--labeled-percent', '0']) != 0
    assert 'percent' in capsys.readouterr().err
    assert sc.main(['--data-root', str(tmp_path), '--ann-file', path.name]) != 0
    err = capsys.readouterr().err
    assert str(path) in err and "'images'" in err


# ---------------------------------------------------------------------------------------------------------------
# --mode published / stac: the reference algorithms, re-stated here from their definitions (SoftTeacher's
# tools/dataset/semi_coco.py and STAC's prepare_datasets/prepare_coco_data.py): numpy's global legacy generator
# seeded with fold + offset, int(p / 100.0 * N) indices from np.random.choice over range(N), without (SoftTeacher)
# or with (STAC) replacement; labeled annotations = those of the labeled images, every other one unlabeled; names
# instances_train2017.{fold}@{int(p)}[-unlabeled].json; plain json.dump of images, annotations, licenses,
# categories, info.

def reference_split(anno, fold, percent, seed_offset=0, replace=False):
    state = np.random.get_state()
    try:
        np.random.seed(fold + seed_offset)
        n = len(anno['images'])
        chosen = set(np.random.choice(range(n), size=int(percent / 100.0 * n), replace=replace).tolist())
    finally:
        np.random.set_state(state)
    lab_imgs = [im for i, im in enumerate(anno['images']) if i in chosen]
    unlab_imgs = [im for i, im in enumerate(anno['images']) if i not in chosen]
    lab_ids = {im['id'] for im in lab_imgs}
    lab_anns = [a for a in anno['annotations'] if a['image_id'] in lab_ids]
    unlab_anns = [a for a in anno['annotations'] if a['image_id'] not in lab_ids]
    out = {}
    for suffix, imgs, anns in (('', lab_imgs, lab_anns), ('-unlabeled', unlab_imgs, unlab_anns)):
        name = f'instances_train2017.{fold}@{int(percent)}{suffix}.json'
        out[name] = json.dumps(dict(images=imgs, annotations=anns, licenses=anno['licenses'],
                                    categories=anno['categories'], info=anno['info']))
    return out


def small_annotation_file(tmp_path, n=437):
    coco = make_coco(n)
    rng = np.random.default_rng(0)
    coco['images'] = [coco['images'][i] for i in rng.permutation(n)]  # ids not in file order
    coco['annotations'].append(dict(id=10**6, image_id=-5, category_id=1, bbox=[0, 0, 1, 1], area=1, iscrowd=0))
    (tmp_path / 'annotations').mkdir()
    with open(tmp_path / 'annotations' / 'instances_train2017.json', 'w') as f:
        json.dump(coco, f)
    return coco


@pytest.mark.parametrize('mode,offset', [('published', 0), ('published', 12345), ('stac', 0)])
def test_published_modes_reproduce_the_reference_scripts_files(tmp_path, mode, offset):
    coco = small_annotation_file(tmp_path)
    out = tmp_path / 'out'
    args = ['--data-root', str(tmp_path), '--out-dir', str(out), '--labeled-percent', '1', '5', '10', '--fold', '5',
            '--mode', mode, '--seed-offset', str(offset)]
    assert sc.main(args) == 0
    expected = {}
    for fold in range(1, 6):
        for percent in (1.0, 5.0, 10.0):  # the reference CLI parses --percent as float
            expected.update(reference_split(coco, fold, percent, offset, replace=mode == 'stac'))
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    for name, text in expected.items():
        got = (out / name).read_text()
        assert json.loads(got)['images'] == json.loads(text)['images'], name  # same image ids per fold
        assert got == text, name  # byte-identical file
    lab = json.loads(expected['instances_train2017.3@10.json'])
    if mode == 'published':
        assert len(lab['images']) == int(10 / 100.0 * 437) == 43
    else:
        assert len(lab['images']) < 43, 'STAC draws with replacement'


def test_published_is_the_default_and_differs_from_ours(tmp_path):
    small_annotation_file(tmp_path)
    out = tmp_path / 'default'
    assert sc.main(['--data-root', str(tmp_path), '--out-dir', str(out), '--labeled-percent', '10', '--fold',
                    '2']) == 0
    coco = json.load(open(tmp_path / 'annotations' / 'instances_train2017.json'))
    assert (out / 'instances_train2017.2@10.json').read_text() == \
        reference_split(coco, 2, 10.0)['instances_train2017.2@10.json']
    ours = sc.split_coco(coco, 10, seed=2, mode='ours')[0]
    assert set(ids(ours)) != set(ids(json.load(open(out / 'instances_train2017.2@10.json'))))


def test_published_mode_rejects_empty_or_colliding_splits(tmp_path):
    with pytest.raises(ValueError, match='= 0 images'):
        sc.split_coco(make_coco(50), 1, seed=1)  # int(0.5) = 0 labeled images
    with pytest.raises(ValueError, match='mode must be one of'):
        sc.split_coco(make_coco(50), 10, seed=1, mode='nope')
    small_annotation_file(tmp_path)
    with pytest.raises(ValueError, match='same file names'):
        sc.split_coco_file(str(tmp_path / 'annotations' / 'instances_train2017.json'), str(tmp_path / 'o'),
                           percents=(10, 10.5))
