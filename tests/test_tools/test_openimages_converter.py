"""Open Images converter on a tiny 2018_04-style release: name-sorted seen/unseen lists from MIDs, top-k unseen
indices, confidence 1/0 as positive/explicit negative, conflicting images dropped, unseen labels kept out of
training, safe unpickling of the unseen list, clear errors naming files."""
import json
import os
import pickle

import numpy as np
import pytest
from mmengine.config import Config

from conftest import REPO, load_module_from_path

tool = load_module_from_path('qv_openimages_to_json',
                             os.path.join(REPO, 'tools/dataset_converters/openimages_to_json.py'))

HEADER = 'ImageID,Source,LabelName,Confidence\n'


def make_raw(root):
    meta = root / '2018_04'
    (meta / 'train').mkdir(parents=True)
    (meta / 'test').mkdir()
    # MIDs: /m/a dog, /m/b "cat, domestic" (quoted, comma), /m/c apple, /m/d zebra, /m/e bird, /m/f rare
    (meta / 'class-descriptions.csv').write_text(
        '/m/a,dog\n/m/b,"cat, domestic"\n/m/c,apple\n/m/d,zebra\n/m/e,bird\n/m/f,rare\n')
    (meta / 'classes-trainable.txt').write_text('/m/a\n/m/b\n/m/c\n')
    with open(meta / 'unseen_labels.pkl', 'wb') as f:
        pickle.dump(np.array(['/m/f', '/m/d', '/m/e'], dtype=object), f)
    (meta / 'top_400_unseen.csv').write_text('1\n2\n')          # zebra, bird (not "rare")
    (meta / 'train/train-annotations-human-imagelabels.csv').write_text(
        HEADER + 'i1,verification,/m/a,1\ni1,verification,/m/c,0\ni1,verification,/m/d,1\n'   # unseen -> ignored
        'i2,verification,/m/b,1\ni2,verification,/m/b,0\n'                                    # conflict -> dropped
        'i3,crowdsource,/m/c,1\ni3,verification,/m/zz,1\n'                                    # unknown MID ignored
        'i4,verification,/m/a,0\n')
    (meta / 'test/test-annotations-human-imagelabels.csv').write_text(
        HEADER + 't1,verification,/m/e,1\nt1,verification,/m/a,0\nt1,verification,/m/d,0\n'
        't2,verification,/m/b,1\nt2,verification,/m/f,1\n')
    for rel in ('train/00/i1.jpg', 'train/00/i2.jpg', 'train/01/i3.jpg', 'train/01/i4.jpg', 'test/t1.jpg',
                'test/t2.jpg'):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b'x')


def test_conversion(tmp_path):
    raw, out = tmp_path / 'OpenImages', tmp_path / 'out'
    make_raw(raw)
    stats = tool.convert(str(raw), str(out), val_fraction=0.0)
    assert stats == dict(num_seen=3, num_unseen=2, merged_names=0, merged_mids=0, train=3, val=0, test=2,
                         conflicting_dropped=1, missing=0, train_without_positive=1)
    assert (out / 'labels_seen.txt').read_text().splitlines() == ['apple', 'cat, domestic', 'dog']
    assert (out / 'labels_unseen.txt').read_text().splitlines() == ['bird', 'zebra']
    train = json.loads((out / 'annotations/train.json').read_text())
    assert train['metainfo'] == dict(classes=['apple', 'cat, domestic', 'dog', 'bird', 'zebra'], num_seen=3,
                                     negatives='explicit', dataset='OpenImages-2018_04', merged_mids={})
    assert train['data_list'] == [
        dict(img_path='train/00/i1.jpg', gt_label=[2], gt_negative=[0]),   # zebra (unseen) not in training
        dict(img_path='train/01/i3.jpg', gt_label=[0], gt_negative=[]),
        dict(img_path='train/01/i4.jpg', gt_label=[], gt_negative=[2])]
    test = json.loads((out / 'annotations/test.json').read_text())['data_list']
    assert test == [dict(img_path='test/t1.jpg', gt_label=[3], gt_negative=[2, 4]),
                    dict(img_path='test/t2.jpg', gt_label=[1], gt_negative=[])]   # 'rare' is not top-k: ignored
    # the written files load through the dataset class (training = seen labels only)
    from queryvision_mm.datasets import QVZSLMultiLabelDataset
    ds = QVZSLMultiLabelDataset(str(out / 'annotations/train.json'), data_prefix=str(raw), seen_only=True,
                                pipeline=[], lazy_init=False)
    assert len(ds) == 3 and ds.metainfo['negatives'] == 'explicit'
    # the shipped Open Images config drops training images without a seen positive (i4), as the official loader
    cfg = Config.fromfile(os.path.join(REPO, 'configs/qks/openimages_vitb16.py'))
    ds = QVZSLMultiLabelDataset(str(out / 'annotations/train.json'), data_prefix=str(raw), seen_only=True,
                                pipeline=[], filter_cfg=cfg.train_dataloader.dataset.get('filter_cfg'))
    assert [ds.get_data_info(i)['img_path'] for i in range(len(ds))] == [str(raw / 'train/00/i1.jpg'),
                                                                           str(raw / 'train/01/i3.jpg')]
    # a val split is carved from training images, deterministically
    tool.convert(str(raw), str(tmp_path / 'o2'), val_fraction=0.34, seed=1)
    val = json.loads((tmp_path / 'o2/annotations/val.json').read_text())['data_list']
    tr2 = json.loads((tmp_path / 'o2/annotations/train.json').read_text())['data_list']
    assert len(val) == 1 and len(tr2) == 2 and val[0] not in tr2


def test_unsafe_pickle_and_bad_files(tmp_path):
    raw = tmp_path / 'OpenImages'
    make_raw(raw)
    meta = raw / '2018_04'

    class Evil:
        def __reduce__(self):
            return (os.system, ('echo pwned',))

    with open(meta / 'unseen_labels.pkl', 'wb') as f:
        pickle.dump([Evil()], f)
    with pytest.raises(ValueError, match=r'unseen_labels.pkl: cannot read .*refusing to load'):
        tool.convert(str(raw), str(tmp_path / 'o'))
    (meta / 'unseen_labels.pkl').unlink()
    (meta / 'unseen_labels.txt').write_text('/m/f\n/m/d\n/m/e\n')       # text list is accepted instead
    assert tool.convert(str(raw), str(tmp_path / 'o'), val_fraction=0)['num_unseen'] == 2
    (meta / 'top_400_unseen.csv').write_text('1\n7\n')
    with pytest.raises(ValueError, match=r'top_400_unseen.csv: line 2: index 7 outside the 3 unseen'):
        tool.convert(str(raw), str(tmp_path / 'o'))
    (meta / 'top_400_unseen.csv').write_text('1\n2\n')
    (meta / 'classes-trainable.txt').write_text('/m/a\n/m/q\n')
    with pytest.raises(KeyError, match=r'classes-trainable.txt: 1 label ids have no name .* /m/q'):
        tool.convert(str(raw), str(tmp_path / 'o'))
    (meta / 'classes-trainable.txt').write_text('/m/a\n/m/b\n/m/c\n')
    csv_path = meta / 'test/test-annotations-human-imagelabels.csv'
    csv_path.write_text(HEADER + 't1,verification,/m/e,0.5\n')
    with pytest.raises(ValueError, match=r'test-annotations-human-imagelabels.csv: line 2: Confidence'):
        tool.convert(str(raw), str(tmp_path / 'o'))
    csv_path.write_text(HEADER + 't1,verification,/m/e,1\nt9,verification,/m/e,1\n')
    with pytest.raises(FileNotFoundError, match=r'test image t9 is annotated but not found'):
        tool.convert(str(raw), str(tmp_path / 'o'))
    stats = tool.convert(str(raw), str(tmp_path / 'o3'), missing='skip')
    assert stats['missing'] == 1 and (tmp_path / 'o3/missing_images.txt').read_text().split() == ['test/t9']


def test_mids_sharing_a_name_are_recorded_and_a_stale_num_seen_fails(tmp_path, capsys):
    """Issue 13.7: two trainable MIDs named "dog" become one label, which lowers num_seen (3 MIDs -> 2 labels) and so
    moves the seen/unseen boundary. The converter records and reports the merge, and a head / metric still configured
    for 3 seen labels is an error naming the field and the annotation file."""
    from types import SimpleNamespace

    from queryvision_mm.datasets import QVZSLMultiLabelDataset
    from queryvision_mm.evaluation.metrics import QVZSLMultiLabelMetric
    from queryvision_mm.evaluation.metrics.zsl_consistency_hook import zsl_consistency_errors
    raw, out = tmp_path / 'OpenImages', tmp_path / 'out'
    make_raw(raw)
    meta = raw / '2018_04'
    with open(meta / 'class-descriptions.csv', 'a') as f:
        f.write('/m/g,dog\n')
    (meta / 'classes-trainable.txt').write_text('/m/a\n/m/b\n/m/g\n')
    assert tool.main([str(raw), str(out), '--val-fraction', '0']) == 0
    assert 'WARNING: 1 MIDs share a name' in capsys.readouterr().err
    train = json.loads((out / 'annotations/train.json').read_text())
    assert train['metainfo']['num_seen'] == 2 and train['metainfo']['merged_mids'] == {'dog': ['/m/a', '/m/g']}
    ann = str(out / 'annotations/test.json')
    ds = QVZSLMultiLabelDataset(ann, data_prefix=str(raw), pipeline=[])
    names = ['cat, domestic', 'dog', 'bird', 'zebra']
    head = SimpleNamespace(num_seen=3, label_names=names, embed_file='emb.safetensors')  # stale: 3 trainable MIDs
    metric = QVZSLMultiLabelMetric(num_seen=3, negatives='explicit')
    errors = zsl_consistency_errors(SimpleNamespace(head=head), ds, [metric], 'test_dataloader')
    assert any(e.startswith('model.head.num_seen=3') and ann in e for e in errors)
    assert any(e.startswith('test_evaluator.num_seen=3') and ann in e for e in errors)
    head.num_seen, metric.num_seen = 2, 2
    assert zsl_consistency_errors(SimpleNamespace(head=head), ds, [metric], 'test_dataloader') == []
    head.label_names = ['cat, domestic', 'dog', 'dog', 'bird', 'zebra']  # an embedding file with the duplicate
    assert 'first difference at index 2' in zsl_consistency_errors(SimpleNamespace(head=head), ds, [], 'x')[0]
    # without the hook the metric stops too, from the dataset's metainfo
    metric = QVZSLMultiLabelMetric(num_seen=3, negatives='explicit')
    metric.dataset_meta = ds.metainfo
    with pytest.raises(ValueError, match=r'num_seen=3 but .*test.json has metainfo.num_seen=2'):
        metric.process({}, [dict(pred_score=np.zeros(4), gt_label=[0], gt_negative=[])])
