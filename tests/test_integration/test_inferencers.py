"""Inferencers on our configs (issue 16, item 2): ``QVDetInferencer`` (mmdet's ``DetInferencer``, which refuses our
``QVLoadImageFromFile`` test pipelines) on the Semi-DETR, Sparse Semi-DETR and CQ-DINO demo models and
``QVMultiLabelInferencer`` on the QKS demo model, all with random weights saved as a checkpoint the way the Runner
writes one (``state_dict`` + ``meta.dataset_meta``), on a real photo; and ``demo/image_demo.py``."""
import copy
import json
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from conftest import REPO, load_module_from_path

SHAPES = ('circle', 'square', 'triangle')


@pytest.fixture(scope='module')
def photo(tmp_path_factory):
    """A real photo (scikit-image's astronaut), 160 px, as a file."""
    from skimage import data
    path = str(tmp_path_factory.mktemp('photo') / 'astronaut.jpg')
    Image.fromarray(data.astronaut()).resize((160, 160)).save(path)
    return path


def save_random_checkpoint(cfg, path, dataset_meta=None, scope='mmdet'):
    from mmengine.registry import DefaultScope
    from mmdet.registry import MODELS as DET_MODELS
    from mmpretrain.registry import MODELS as CLS_MODELS
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope(scope):
        model = (DET_MODELS if scope == 'mmdet' else CLS_MODELS).build(copy.deepcopy(cfg.model))  # build() edits dn_cfg in place
        model.init_weights()  # as the Runner does (no parameter is left as torch.empty's garbage)
    ckpt = dict(state_dict=model.state_dict())
    if dataset_meta is not None:
        ckpt['meta'] = dict(dataset_meta=dataset_meta)
    torch.save(ckpt, str(path))
    return str(path), ckpt['state_dict']


def check_det_prediction(pred, num_classes, size=160):
    n = len(pred['labels'])
    assert n > 0 and len(pred['scores']) == n and len(pred['bboxes']) == n
    assert all(isinstance(lb, int) and 0 <= lb < num_classes for lb in pred['labels'])
    assert all(0.0 <= s <= 1.0 for s in pred['scores']), pred['scores'][:10]
    boxes = np.asarray(pred['bboxes'])
    assert boxes.shape == (n, 4) and (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert boxes.min() >= -1e-3 and boxes.max() <= size + 1e-3, 'boxes are in the input image\'s pixels'


@pytest.mark.parametrize('folder', ['semi_detr', 'sparse_semi_detr'])
def test_semi_detr_det_inferencer(folder, photo, tmp_path):
    from mmdet.apis import DetInferencer

    from queryvision_mm.apis import QVDetInferencer
    config = osp.join(REPO, 'configs', folder, 'demo_shapes.py')
    cfg = Config.fromfile(config)
    assert cfg.test_dataloader.dataset.pipeline[0].type == 'QVLoadImageFromFile'
    ckpt, state = save_random_checkpoint(cfg, tmp_path / 'random.pth', dict(classes=SHAPES))
    inferencer = QVDetInferencer(config, weights=ckpt, device='cpu', show_progress=False)
    with pytest.raises(ValueError, match='LoadImageFromFile is not found'):  # why the subclass exists
        DetInferencer._init_pipeline(inferencer, Config.fromfile(config))  # mmdet's own pipeline set-up
    assert tuple(inferencer.model.dataset_meta['classes']) == SHAPES
    key = next(k for k in state if k.startswith('student.') and k.endswith('weight'))
    assert torch.equal(inferencer.model.state_dict()[key], state[key]), 'the checkpoint weights are loaded'
    out_dir = tmp_path / 'out'
    out = inferencer(photo, out_dir=str(out_dir), pred_score_thr=0.0, no_save_pred=False)
    pred = out['predictions'][0]
    check_det_prediction(pred, len(SHAPES))
    assert osp.isfile(out_dir / 'vis' / 'astronaut.jpg')
    assert json.load(open(out_dir / 'preds' / 'astronaut.json'))['labels'] == pred['labels']


@pytest.fixture(scope='module')
def cq_dino_setup(tmp_path_factory):
    from mmengine.registry import DefaultScope
    from mmdet.registry import DATASETS

    from queryvision_mm.testing.demo_data import generate_demo_v3det
    root = tmp_path_factory.mktemp('demo_v3det')
    paths = generate_demo_v3det(str(root), num_train=2, num_val=2, image_size=64)
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'cq_dino', 'demo_v3det.py'))
    cfg.model.language_model.relation.tree_file = paths['tree_file']
    cfg.model.language_model.class_names = paths['label_file']
    cfg.model.hierarchy.tree_file = paths['tree_file']
    cfg.test_dataloader.dataset.data_root = paths['data_root'] + '/'
    with DefaultScope.overwrite_default_scope('mmdet'):  # what the Runner stores as dataset_meta
        metainfo = DATASETS.build(dict(cfg.test_dataloader.dataset, pipeline=[])).metainfo
    ckpt, _ = save_random_checkpoint(cfg, root / 'random.pth', dict(classes=tuple(metainfo['classes'])))
    return cfg, ckpt, tuple(metainfo['classes'])


def test_cq_dino_det_inferencer_global_labels(cq_dino_setup, photo, tmp_path):
    from queryvision_mm.apis import QVDetInferencer
    cfg, ckpt, classes = cq_dino_setup
    assert len(classes) == 14 and len(set(classes)) == 14  # the two V3Det-style "star (...)" names stay apart
    inferencer = QVDetInferencer(cfg, weights=ckpt, device='cpu', show_progress=False)
    assert tuple(inferencer.model.dataset_meta['classes']) == classes
    out = inferencer(photo, out_dir=str(tmp_path / 'out'), pred_score_thr=0.0, return_datasamples=True)
    sample = out['predictions'][0]
    pred = inferencer.pred2dict(sample)
    check_det_prediction(pred, len(classes))
    selected = sample.selected_categories.tolist()
    topk = cfg.model.language_model.topk
    assert len(selected) == topk
    # labels are the selected categories' GLOBAL ids, not the K slot indices
    assert set(pred['labels']) <= set(selected)
    assert max(selected) >= topk, 'this seed selects a category whose global id is not a slot index'
    assert set(pred['labels']) & {c for c in selected if c >= topk}
    names = [inferencer.model.dataset_meta['classes'][lb] for lb in pred['labels']]
    assert set(names) <= {classes[c] for c in selected}
    assert osp.isfile(tmp_path / 'out' / 'vis' / 'astronaut.jpg')


QKS_SEEN, QKS_UNSEEN = ['sky', 'person', 'cup'], ['flag', 'rocket']
TINY_CLIP = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=16, head_width=32),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2))


@pytest.fixture(scope='module')
def qks_setup(tmp_path_factory):
    """configs/qks/demo_photos.py's model with a tiny random CLIP saved and loaded through the real loader."""
    open_clip = pytest.importorskip('open_clip')
    from queryvision_mm.utils.open_clip_loader import save_open_clip_dir
    from queryvision_mm.utils.text_embeddings import encode_class_names, save_class_embeddings
    root = tmp_path_factory.mktemp('qks_inf')
    torch.manual_seed(0)
    clip = open_clip.CLIP(**TINY_CLIP).eval()
    name = save_open_clip_dir(clip, TINY_CLIP, str(root / 'clip'))
    embed = str(root / 'labels.safetensors')
    save_class_embeddings(embed, encode_class_names(clip, open_clip.get_tokenizer('ViT-B-16'), QKS_SEEN + QKS_UNSEEN,
                                                    ['a photo of a {}.']), QKS_SEEN + QKS_UNSEEN)
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'qks', 'demo_photos.py'))
    cfg.model.backbone.update(model_name=name, pretrained=None)
    cfg.model.neck.update(encoder_width=64, hidden_size=64, ffn_dims=128)  # = the tiny CLIP's width
    cfg.model.head.update(embed_file=embed, num_seen=len(QKS_SEEN), in_dims=64, out_dims=32)
    for t in cfg.test_dataloader.dataset.pipeline:
        if t.type == 'ResizeEdge':
            t.scale = 32
        if t.type == 'CenterCrop':
            t.crop_size = 32
    path = str(root / 'qks_demo_tiny.py')
    cfg.dump(path)
    ckpt, _ = save_random_checkpoint(cfg, root / 'random.pth', scope='mmpretrain')  # no dataset_meta
    return path, ckpt


def test_qks_multilabel_inferencer(qks_setup, photo):
    from mmpretrain.apis import ImageClassificationInferencer

    from queryvision_mm.apis import QVMultiLabelInferencer
    config, ckpt = qks_setup
    names = QKS_SEEN + QKS_UNSEEN
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmpretrain'):  # mmpretrain's own inferencer needs its scope
        base = ImageClassificationInferencer(config, pretrained=ckpt, device='cpu')(photo)[0]
    assert 'pred_label' in base and 'pred_labels' not in base  # mmpretrain: the arg-max label only
    inferencer = QVMultiLabelInferencer(config, pretrained=ckpt, device='cpu', topk=3)
    assert inferencer.classes == names, 'names from the label-embedding file when the checkpoint has none'
    res = inferencer(photo)[0]
    scores = np.asarray(res['pred_scores'])  # the head's pred_score (QKS: raw logits by default, or sigmoid)
    assert scores.shape == (len(names), ) and np.isfinite(scores).all()
    assert np.allclose(scores, base['pred_scores'])
    order = np.argsort(-scores, kind='stable')
    assert res['pred_labels'] == order[:3].tolist()
    assert res['pred_classes'] == [names[i] for i in order[:3]]
    assert np.allclose(res['pred_label_scores'], scores[order[:3]])
    assert res['pred_is_unseen'] == [i >= len(QKS_SEEN) for i in order[:3]]
    assert res['pred_class'] == names[order[0]]
    thr = float(np.sort(scores)[-2])  # keeps exactly the two best of the top 5
    res = inferencer(photo, topk=5, thr=thr)[0]
    assert res['pred_labels'] == order[:2].tolist()


def test_multilabel_inferencer_strips_our_loader(qks_setup):
    """The real NUS-WIDE / Open Images test pipelines load with QVLoadImageFromFile; the inferencer loads images
    itself, so that step must go (mmpretrain removes only 'LoadImageFromFile')."""
    from queryvision_mm.apis import QVMultiLabelInferencer
    config, ckpt = qks_setup
    inferencer = QVMultiLabelInferencer(config, pretrained=ckpt, device='cpu')
    nus = Config.fromfile(osp.join(REPO, 'configs', 'qks', 'nuswide_vitb16.py'))
    assert nus.test_dataloader.dataset.pipeline[0].type == 'QVLoadImageFromFile'
    pipeline = inferencer._init_pipeline(nus)
    names = [type(t).__name__ for t in pipeline.transforms]
    assert names == ['ResizeEdge', 'CenterCrop', 'PackInputs']


def test_image_demo_script(cq_dino_setup, photo, tmp_path):
    cfg, ckpt, classes = cq_dino_setup
    config = str(tmp_path / 'cq_dino_demo.py')
    cfg.dump(config)
    out_dir = tmp_path / 'demo_out'
    demo = load_module_from_path('qv_image_demo', osp.join(REPO, 'demo', 'image_demo.py'))
    demo.main([photo, config, '--weights', ckpt, '--out-dir', str(out_dir), '--pred-score-thr', '0.3',
               '--device', 'cpu'])
    pred = json.load(open(out_dir / 'preds' / 'astronaut.json'))
    check_det_prediction(pred, len(classes))
    assert osp.isfile(out_dir / 'vis' / 'astronaut.jpg')
