"""QVLoadImageFromFile: an unreadable training image is skipped with a warning naming it and counted, the run stops
naming the files once too many were skipped, an unreadable evaluation image is an error naming it; the real
training configs use it (Semi-DETR / Sparse base incl. the unlabeled branch, CQ-DINO, QKS)."""
import copy
import glob
import logging
import os.path as osp
import re
import shutil

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.logging import MMLogger
from PIL import Image

from conftest import DEMO_CONFIG, REPO, shrink_semi_detr_cfg


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings_log():
    logger = MMLogger.get_current_instance()
    handler = _Records()
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def _images(root, n=4, size=(24, 20)):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = osp.join(root, f'{i}.jpg')
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _bad_files(root):
    corrupt, empty, missing = (osp.join(root, n) for n in ('corrupt.jpg', 'empty.jpg', 'missing.jpg'))
    with open(corrupt, 'wb') as f:
        f.write(b'\xff\xd8 this is not a jpeg')
    open(empty, 'wb').close()
    return corrupt, empty, missing


def test_training_skips_and_names_unreadable_images(tmp_path, warnings_log):
    from queryvision_mm.datasets import QVLoadImageFromFile
    good = _images(str(tmp_path))
    bad = _bad_files(str(tmp_path))
    load = QVLoadImageFromFile(max_skip_fraction=0.5, min_loads=10)  # up to 5 skips
    for path in bad:
        assert load(dict(img_path=path)) is None
    for path in good:
        out = load(dict(img_path=path))
        assert out['img'].shape == (20, 24, 3) and out['ori_shape'] == (20, 24)
    assert load.num_loads == 7 and load.num_skipped == 3 and set(load.skipped) == set(bad)
    for path in bad:
        assert any(f'skipped unreadable image {path}' in m for m in warnings_log), path


def test_too_many_skips_stop_with_the_files_named(tmp_path, warnings_log):
    from queryvision_mm.datasets import QVLoadImageFromFile
    good = _images(str(tmp_path), n=8)
    corrupt, empty, _ = _bad_files(str(tmp_path))
    load = QVLoadImageFromFile(max_skip_fraction=0.2, min_loads=10)  # at most 2 of >= 10 loads
    for path in good[:6] + [corrupt]:
        load(dict(img_path=path))
    assert load(dict(img_path=empty)) is None  # 2 of 8 loads (limit 0.2 x 10 = 2)
    load(dict(img_path=good[6]))
    with pytest.raises(RuntimeError) as err:
        load(dict(img_path=corrupt))  # 3 of 10 > 2
    msg = str(err.value)
    assert '3 of 10 image loads' in msg and 'max_skip_fraction=0.2' in msg
    assert corrupt in msg and empty in msg and 'check_dataset.py' in msg
    # defaults: a few early skips are tolerated (0.001 of at least 10000 loads = 10), a wrong image root is not
    load = QVLoadImageFromFile()
    for i in range(10):
        assert load(dict(img_path=str(tmp_path / f'nowhere_{i}.jpg'))) is None
    with pytest.raises(RuntimeError, match=re.escape(str(tmp_path / 'nowhere_10.jpg'))):
        load(dict(img_path=str(tmp_path / 'nowhere_10.jpg')))


@pytest.mark.parametrize('kind', ['corrupt', 'empty', 'missing'])
def test_evaluation_loader_raises_naming_the_file(tmp_path, kind):
    from queryvision_mm.datasets import QVLoadImageFromFile
    path = dict(zip(('corrupt', 'empty', 'missing'), _bad_files(str(tmp_path))))[kind]
    with pytest.raises(RuntimeError, match=re.escape(f'unreadable image {path}')):
        QVLoadImageFromFile(skip_unreadable=False)(dict(img_path=path))
    with pytest.raises(ValueError, match='skip_unreadable'):
        QVLoadImageFromFile(ignore_empty=True)


def _demo_copy(tiny_demo_data, tmp_path):
    data = str(tmp_path / 'data')
    shutil.copytree(tiny_demo_data, data)
    return data


def test_demo_datasets_train_through_and_test_fails_on_a_bad_image(tiny_demo_data, tmp_path, warnings_log):
    """The real demo config (base pipelines): the unlabeled training set (MultiBranch branch) skips a corrupt image
    and names it; the test set with an empty image raises naming it (mmcv's cv2 error for an empty file does not)."""
    from mmdet.registry import DATASETS
    data = _demo_copy(tiny_demo_data, tmp_path)
    bad = sorted(glob.glob(osp.join(data, 'images', 'unlabeled', '*.jpg')))[3]
    with open(bad, 'wb') as f:
        f.write(b'this is not a jpeg')
    cfg = shrink_semi_detr_cfg(Config.fromfile(DEMO_CONFIG), data_root=data)
    ds = DATASETS.build(cfg.train_dataloader.dataset.datasets[1])
    assert ds.pipeline.transforms[0].__class__.__name__ == 'QVLoadImageFromFile'
    for i in range(len(ds)):
        sample = ds[i]
        assert sample['data_samples']['unsup_teacher'].img_path != bad
    assert any(f'skipped unreadable image {bad}' in m for m in warnings_log)
    # above the limit, the run stops naming the file (here: any skip; mmengine's refetch loop does not swallow it)
    strict = copy.deepcopy(cfg.train_dataloader.dataset.datasets[1])
    strict.pipeline[0].update(max_skip_fraction=0.0)
    ds = DATASETS.build(strict)
    with pytest.raises(RuntimeError, match=r'1 of \d+ image loads in this process were unreadable, more than '
                       r'max_skip_fraction=0 .*unreadable files: ' + re.escape(bad)):
        for i in range(len(ds)):
            ds[i]

    val_img = sorted(glob.glob(osp.join(data, 'images', 'val', '*.jpg')))[1]
    open(val_img, 'wb').close()
    test_ds = DATASETS.build(cfg.test_dataloader.dataset)
    assert test_ds.test_mode
    with pytest.raises(RuntimeError, match=re.escape(f'unreadable image {val_img}')):
        for i in range(len(test_ds)):
            test_ds[i]


def _load_types(pipeline):
    out = []
    for t in pipeline:
        if t['type'] in ('LoadImageFromFile', 'QVLoadImageFromFile'):
            out.append((t['type'], t.get('skip_unreadable', True)))
    return out


@pytest.mark.parametrize('name', ['semi_detr/coco_10pct', 'sparse_semi_detr/coco_10pct', 'semi_detr/coco_full',
                                  'sparse_semi_detr/voc', 'cq_dino/v3det_swinb', 'qks/nuswide_vitb16',
                                  'qks/openimages_vitb16'])
def test_real_configs_skip_in_training_and_raise_in_evaluation(name):
    cfg = Config.fromfile(osp.join(REPO, 'configs', f'{name}.py'))
    train = cfg.train_dataloader.dataset
    for ds in train.get('datasets', [train]):  # semi-supervised: labeled + unlabeled (MultiBranch) sets
        assert _load_types(ds.pipeline) == [('QVLoadImageFromFile', True)], f'{name}: {ds.pipeline[0]}'
    for split in ('val', 'test'):
        pipeline = cfg[f'{split}_dataloader'].dataset.pipeline
        assert _load_types(pipeline) == [('QVLoadImageFromFile', False)], f'{name} {split}'
