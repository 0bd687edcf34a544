"""CQ-DINO class names (issue 13, item 9): the configs pass the dataset's class names to the selector, which checks
the embedding file's class list name by name (not only its length), and the rehearsal's stand-in embedding files
carry the same names."""
import copy
import glob
import inspect
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from mmdet.registry import DATASETS, MODELS

from conftest import REPO
from cq_dino_shrink import NUM_CLASSES, shrink_cq_dino_model

CONFIGS = sorted(osp.splitext(osp.basename(p))[0] for p in glob.glob(osp.join(REPO, 'configs', 'cq_dino', '*.py')))


def load(name):
    return Config.fromfile(osp.join(REPO, 'configs', 'cq_dino', f'{name}.py'))


@pytest.mark.parametrize('name', CONFIGS)
def test_configs_pass_the_datasets_class_names(name):
    cfg = load(name)
    sel = cfg.model.language_model
    datasets = [cfg.train_dataloader.dataset, cfg.val_dataloader.dataset]
    if sel.embed_file is None and sel.get('class_names') is None:
        pytest.skip('random category queries: no embedding file to check')
    assert sel.get('class_names') is not None, f'{name}: the embedding file would only be checked by its class count'
    for ds in datasets:
        if ds.type == 'V3DetDataset':  # the class list V3DetDataset reads: data_root + label_file
            label_file = ds.get('label_file') or inspect.signature(
                DATASETS.get('V3DetDataset').__init__).parameters['label_file'].default
            assert sel.class_names == ds.data_root + label_file
        else:
            from mmdet.datasets import CocoDataset
            assert ds.type == 'CocoDataset'
            assert tuple(sel.class_names) == tuple(ds.metainfo.classes) == CocoDataset.METAINFO['classes']
            assert len(sel.class_names) == sel.num_classes


def _embed_file(tmp_path, names, dims=32):
    from queryvision_mm.utils.text_embeddings import save_class_embeddings
    path = str(tmp_path / 'emb.safetensors')
    save_class_embeddings(path, torch.randn(len(names), dims), names)
    return path


@pytest.mark.parametrize('kind', ['txt', 'json', 'list'])
def test_model_checks_the_embedding_files_names_against_the_dataset(tmp_path, kind):
    names = [f'class {i}' for i in range(NUM_CLASSES)]
    m = shrink_cq_dino_model(load('coco_r50').model)
    m.language_model.embed_file = emb = _embed_file(tmp_path, names)

    def class_source(ns):
        if kind == 'list':
            return list(ns)
        path = tmp_path / f'classes.{kind}'
        if kind == 'txt':  # one name per line, as V3Det's category_name_13204_v3det_2023_v1.txt
            path.write_text('\n'.join(ns) + '\n')
        else:  # COCO json, categories in id order (listed out of order in the file)
            import json
            cats = [dict(id=i + 1, name=n) for i, n in enumerate(ns)][::-1]
            path.write_text(json.dumps(dict(images=[], annotations=[], categories=cats)))
        return str(path)

    m.language_model.class_names = class_source(names)
    model = MODELS.build(copy.deepcopy(m))  # same names, same order: accepted
    assert model.language_model.category_embed.shape == (NUM_CLASSES, 32)
    swapped = list(names)
    swapped[3], swapped[4] = swapped[4], swapped[3]  # same count, different order
    m.language_model.class_names = class_source(swapped)
    with pytest.raises(ValueError, match=r"class 3 is 'class 3' in the file but 'class 4' in the dataset") as err:
        MODELS.build(copy.deepcopy(m))
    assert emb in str(err.value)


def test_missing_class_file_is_named(tmp_path):
    m = shrink_cq_dino_model(load('coco_r50').model)
    m.language_model.embed_file = _embed_file(tmp_path, [f'c{i}' for i in range(NUM_CLASSES)])
    m.language_model.class_names = str(tmp_path / 'nope.txt')
    with pytest.raises(FileNotFoundError, match='nope.txt'):
        MODELS.build(copy.deepcopy(m))
    m.language_model.embed_file = None  # nothing to check: the class file is not read
    MODELS.build(m)


@pytest.mark.parametrize('rel', ['configs/cq_dino/coco_r50.py', 'configs/cq_dino/v3det_r50.py'])
def test_rehearsal_embedding_files_carry_the_names_the_model_checks(tmp_path, monkeypatch, rel):
    from queryvision_mm.models.detectors.cq_dino import resolve_class_names
    from queryvision_mm.testing.rehearsal import DATA_WRITERS, data_det  # noqa: F401
    from queryvision_mm.testing.rehearsal.context import RehearsalContext
    from queryvision_mm.testing.rehearsal.plan import iter_datasets, loaders
    from queryvision_mm.testing.rehearsal.weights_det import category_side_files
    from queryvision_mm.utils.text_embeddings import load_class_embeddings
    root = tmp_path / 'sandbox'
    root.mkdir()
    ctx = RehearsalContext(root=str(root), torch_home=str(tmp_path / 'th'), num_images=2, img_scale=64)
    monkeypatch.chdir(root)
    cfg = Config.fromfile(osp.join(REPO, rel))
    if cfg.get('num_classes'):
        ctx.extra['num_classes'] = cfg.num_classes
    for loader in loaders(cfg):
        for ds in iter_datasets(loader['dataset']):
            DATA_WRITERS[ds['type']](ds, ctx)
    category_side_files(cfg, ctx)
    lm = cfg.model.language_model.to_dict()
    expected = resolve_class_names(lm)['class_names']  # what QVCQDINO hands the selector
    assert len(expected) == lm['num_classes']
    load_class_embeddings(lm['embed_file'], expected_class_names=expected)  # raises on any difference
