"""tools/misc/check_dataset.py on a tiny COCO-format config (labeled + unlabeled ConcatDataset, val set): a corrupt,
a missing, an empty and a wrongly-sized image, a box outside its image and a duplicated image id are all listed,
the JSON report has them, the exit code is 1; a clean set passes with 0."""
import json
import os
import os.path as osp
import re
import subprocess
import sys

import numpy as np
from mmengine.config import Config
from PIL import Image

from conftest import REPO, load_module_from_path

SCRIPT = osp.join(REPO, 'tools', 'misc', 'check_dataset.py')
CLASSES = ('a', 'b')


def _coco(root, name, images, boxes=None):
    boxes = boxes or {}
    anns = []
    for img in images:
        for box in boxes.get(img['id'], [[2, 2, 6, 5]]):
            anns.append(dict(id=len(anns) + 1, image_id=img['id'], category_id=1, bbox=box, area=box[2] * box[3],
                             iscrowd=0))
    data = dict(images=images, annotations=anns, categories=[dict(id=i + 1, name=c) for i, c in enumerate(CLASSES)])
    with open(osp.join(root, name), 'w') as f:
        json.dump(data, f)


def make_set(root, broken=True):
    """6 labeled, 4 unlabeled, 3 val images of 32x24; with ``broken``: labeled 1 corrupt, labeled 2 missing,
    unlabeled 0 annotated 40x30 (decoded 32x24), val 1 empty, a labeled box past the right edge, a zero-width unlabeled
    box, val image id 1 twice."""
    rng = np.random.default_rng(0)
    img_dir = osp.join(root, 'images')
    os.makedirs(img_dir, exist_ok=True)
    files = {}
    for split, n in (('lab', 6), ('unl', 4), ('val', 3)):
        files[split] = []
        for i in range(n):
            name = f'{split}_{i}.jpg'
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(osp.join(img_dir, name))
            files[split].append(dict(id=len(files[split]) + (100 if split == 'unl' else 1), file_name=name,
                                     width=32, height=24))
    boxes = {}
    if broken:
        with open(osp.join(img_dir, 'lab_1.jpg'), 'wb') as f:
            f.write(b'\xff\xd8 definitely not a jpeg')
        os.remove(osp.join(img_dir, 'lab_2.jpg'))
        files['unl'][0].update(width=40, height=30)
        open(osp.join(img_dir, 'val_1.jpg'), 'wb').close()
        boxes[4] = [[20, 2, 20, 5]]  # x2 = 40 > 32 + 1
        boxes[100] = [[2, 2, 0, 5]]  # zero width: mmdet drops it silently
        files['val'][2]['id'] = files['val'][0]['id']
    _coco(root, 'labeled.json', files['lab'], boxes)
    _coco(root, 'unlabeled.json', files['unl'], boxes)
    _coco(root, 'val.json', files['val'])


def write_config(root, path):
    def ds(ann, test_mode=False):
        return dict(type='CocoDataset', data_root=root, ann_file=ann, data_prefix=dict(img='images/'),
                    metainfo=dict(classes=CLASSES), test_mode=test_mode, filter_cfg=dict(filter_empty_gt=False),
                    pipeline=[dict(type='QVLoadImageFromFile')])
    val = dict(batch_size=1, dataset=ds('val.json', True))
    cfg = Config(dict(default_scope='mmdet', custom_imports=dict(imports=['queryvision_mm']),
                      train_dataloader=dict(batch_size=2, dataset=dict(
                          type='ConcatDataset', datasets=[ds('labeled.json'), ds('unlabeled.json')])),
                      val_dataloader=val, test_dataloader=val))
    cfg.dump(path)
    return path


def test_check_dataset_lists_every_problem(tmp_path):
    root = str(tmp_path / 'data')
    make_set(root)
    cfg = write_config(root, str(tmp_path / 'cfg.py'))
    out = str(tmp_path / 'report.json')
    proc = subprocess.run([sys.executable, SCRIPT, cfg, '--workers', '2', '--out', out], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-3000:]
    report = json.load(open(out))
    found = {(p['kind'], osp.basename(p['path'])) for e in report['splits'].values() for p in e['problems']}
    assert found == {('unreadable', 'lab_1.jpg'), ('missing', 'lab_2.jpg'), ('size_mismatch', 'unl_0.jpg'),
                     ('bbox_outside', 'lab_3.jpg'), ('empty', 'val_1.jpg'), ('duplicate_id', 'val.json'),
                     ('bbox_nonpositive', 'unlabeled.json')}, found
    assert report['num_problems'] == 7
    assert report['splits']['test']['same_as'] == 'val'
    assert [d['num_items'] for d in report['splits']['train']['datasets']] == [6, 4]
    mismatch = next(p for p in report['splits']['train']['problems'] if p['kind'] == 'size_mismatch')
    assert mismatch['detail'] == 'annotation 40x30, decoded 32x24'
    for name in ('lab_1.jpg', 'lab_2.jpg', 'unl_0.jpg', 'val_1.jpg'):
        assert osp.join(root, 'images', name) in text, name
    dup = next(p for p in report['splits']['val']['problems'] if p['kind'] == 'duplicate_id')
    assert dup['detail'] == 'image id 1 used by 2 images (val_0.jpg, val_2.jpg)'
    assert '7 problem(s)' in text


def test_check_dataset_clean_set_and_missing_annotation(tmp_path, capsys):
    tool = load_module_from_path('qv_check_dataset_under_test', SCRIPT)
    root = str(tmp_path / 'data')
    make_set(root, broken=False)
    cfg = write_config(root, str(tmp_path / 'cfg.py'))
    assert tool.main([cfg]) == 0
    assert '0 problem(s)' in capsys.readouterr().out
    # a dataset that cannot be built is a problem of its split, the other splits are still checked
    assert tool.main([cfg, '--cfg-options', 'val_dataloader.dataset.ann_file=nope.json', '--splits', 'val',
                      'train']) == 1
    text = capsys.readouterr().out
    assert re.search(r'build .*nope\.json', text) and 'train:' in text and '1 problem(s)' in text

