"""NUS-WIDE converter on a tiny raw release: seen = tags minus the concepts, train/val/test filters, complement
negatives, '\\' paths, missing images as an error or a listed skip, malformed matrices named."""
import json
import os.path as osp

import pytest

from conftest import REPO, load_module_from_path

tool = load_module_from_path('qv_nuswide_to_json', osp.join(REPO, 'tools/dataset_converters/nuswide_to_json.py'))


def make_raw(root, test_gt_cat=(1, 0, 0)):
    (root / 'ImageList').mkdir(parents=True)
    (root / 'NUS_WID_Tags').mkdir()
    (root / 'Groundtruth/TrainTestLabels').mkdir(parents=True)
    (root / 'NUS_WID_Tags/TagList1k.txt').write_text('sky\ncat\nwater\ndog\n')
    (root / 'Concepts81.txt').write_text('cat\ndog\n')
    train = ['a\\1.jpg', 'a\\2.jpg', 'b\\3.jpg', 'b\\4.jpg']
    test = ['c\\5.jpg', 'c\\6.jpg', 'c\\7.jpg']
    (root / 'ImageList/TrainImagelist.txt').write_text('\n'.join(train) + '\n')
    (root / 'ImageList/TestImagelist.txt').write_text('\n'.join(test) + '\n')
    # columns sky cat water dog; image 3 has only unseen tags -> not a training image
    (root / 'NUS_WID_Tags/Train_Tags1k.dat').write_text('1 0 0 0\n0 1 1 0\n0 1 0 1\n1 0 1 1\n')
    (root / 'NUS_WID_Tags/Test_Tags1k.dat').write_text('0 0 0 0\n0 0 1 0\n0 0 0 0\n')
    (root / 'Groundtruth/TrainTestLabels/Labels_cat_Test.txt').write_text('\n'.join(map(str, test_gt_cat)) + '\n')
    (root / 'Groundtruth/TrainTestLabels/Labels_dog_Test.txt').write_text('0\n1\n0\n')
    for p in train + test:
        f = root / 'Flickr' / p.replace('\\', '/')
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b'x')


def test_conversion(tmp_path):
    raw, out = tmp_path / 'raw', tmp_path / 'out'
    make_raw(raw)
    stats = tool.convert(str(raw), str(out), val_fraction=0.34, seed=0)
    assert (stats['num_seen'], stats['num_unseen']) == (2, 2)
    assert (out / 'labels_seen.txt').read_text().split() == ['sky', 'water']
    assert (out / 'labels_unseen.txt').read_text().split() == ['cat', 'dog']
    tr = [json.loads((out / f'annotations/{s}.json').read_text()) for s in ('train', 'val')]
    assert tr[0]['metainfo'] == dict(classes=['sky', 'water', 'cat', 'dog'], num_seen=2, negatives='complement',
                                     dataset='NUS-WIDE')
    items = {x['img_path']: x['gt_label'] for d in tr for x in d['data_list']}
    assert items == {'a/1.jpg': [0], 'a/2.jpg': [1], 'b/4.jpg': [0, 1]}, 'seen labels only; b/3 has none'
    assert len(tr[1]['data_list']) == 1 and len(tr[0]['data_list']) == 2
    test = {x['img_path']: x['gt_label'] for x in json.loads((out / 'annotations/test.json').read_text())['data_list']}
    assert test == {'c/5.jpg': [2], 'c/6.jpg': [1, 3]}, 'c/7 has no positive at all'


def test_missing_images_and_bad_files(tmp_path):
    raw = tmp_path / 'raw'
    make_raw(raw)
    (raw / 'Flickr/a/2.jpg').unlink()
    with pytest.raises(FileNotFoundError, match=r'Flickr/a/2.jpg'):
        tool.convert(str(raw), str(tmp_path / 'o1'))
    stats = tool.convert(str(raw), str(tmp_path / 'o2'), missing='skip')
    assert stats['missing'] == 1 and (tmp_path / 'o2/missing_images.txt').read_text().split() == ['a/2.jpg']
    (raw / 'NUS_WID_Tags/Test_Tags1k.dat').write_text('0 0 0 0\n0 0 2 0\n0 0 0 0\n')
    with pytest.raises(ValueError, match=r'Test_Tags1k.dat: line 2 must hold 4 values of 0/1'):
        tool.convert(str(raw), str(tmp_path / 'o3'), missing='skip')
    (raw / 'Concepts81.txt').unlink()
    with pytest.raises(FileNotFoundError, match='Concepts81.txt'):
        tool.convert(str(raw), str(tmp_path / 'o4'))
