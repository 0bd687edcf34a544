"""The QKS configs: official values, and the NUS-WIDE config (shrunk: tiny CLIP saved and loaded through the real
loader, small Q-Former) trains, validates on the seen split and tests ZSL/GZSL through mmengine's Runner; the
zero-shot CLIP config tests without a checkpoint."""
import json
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from conftest import REPO

open_clip = pytest.importorskip('open_clip')
DEFAULT_SCOPE = 'mmpretrain'
TINY = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=16, head_width=32),
            text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2))
SEEN, UNSEEN = ['sky', 'water', 'grass'], ['cat', 'car']


def load(name):
    return Config.fromfile(osp.join(REPO, 'configs', 'qks', f'{name}.py'))


def test_official_values():
    nus, oi = load('nuswide_vitb16'), load('openimages_vitb16')
    assert (nus.model.neck.num_layers, nus.model.neck.num_queries) == (7, 12)
    assert (oi.model.neck.num_layers, oi.model.neck.num_queries) == (8, 22)
    assert nus.model.head.loss.gamma_neg == 4.0 and nus.model.head.loss.loss_weight == 1000.0
    assert oi.model.head.loss.type == 'mmpretrain.CrossEntropyLoss' and oi.model.head.loss.use_sigmoid
    assert nus.optim_wrapper.optimizer.lr == 1e-5 and nus.optim_wrapper.optimizer.weight_decay == 1e-4
    assert nus.param_scheduler.type == 'ReduceOnPlateauLR' and nus.param_scheduler.patience == 1
    assert nus.train_cfg.max_epochs == 60
    assert nus.val_evaluator.splits == ('seen', ), 'model selection never looks at the test set'
    assert 'val.json' in nus.val_dataloader.dataset.ann_file and 'test.json' in nus.test_dataloader.dataset.ann_file
    assert nus.test_evaluator.topk == (3, 5) and oi.test_evaluator.topk == (10, 20)
    assert oi.test_evaluator.negatives == 'explicit' and nus.test_evaluator.negatives == 'complement'


@pytest.fixture(scope='module')
def tiny_setup(tmp_path_factory):
    from queryvision_mm.utils.open_clip_loader import save_open_clip_dir
    from queryvision_mm.utils.text_embeddings import encode_class_names, save_class_embeddings
    root = tmp_path_factory.mktemp('qks_cfg')
    torch.manual_seed(0)
    clip = open_clip.CLIP(**TINY).eval()
    name = save_open_clip_dir(clip, TINY, str(root / 'clip'))
    tok = open_clip.get_tokenizer('ViT-B-16')
    for key, tmpl in (('pool', ['a photo of a {}.', 'there is a {} in the scene.']),
                      ('scene', ['There is a {} in the scene'])):
        save_class_embeddings(str(root / f'{key}.safetensors'), encode_class_names(clip, tok, SEEN + UNSEEN, tmpl),
                              SEEN + UNSEEN)
    rng = np.random.default_rng(0)
    (root / 'img').mkdir()
    items = []
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / 'img' / f'{i}.jpg')
        items.append(dict(img_path=f'{i}.jpg', gt_label=sorted({i % 3, (i + 1) % 3})))
    classes = SEEN + UNSEEN
    for split, data in (('train', items[:4]), ('val', items[4:6]),
                        ('test', [dict(img_path='6.jpg', gt_label=[0, 3]), dict(img_path='7.jpg', gt_label=[4])])):
        (root / f'{split}.json').write_text(json.dumps(dict(
            metainfo=dict(classes=classes, num_seen=3, negatives='complement'), data_list=data)))
    return root, name


def shrink(cfg, root, name, head_file):
    cfg.model.backbone.update(model_name=name, pretrained=None)
    if cfg.model.neck:
        cfg.model.neck.update(num_layers=1, num_queries=3, encoder_width=64, hidden_size=64, num_heads=2, ffn_dims=64)
        cfg.model.head.update(in_dims=64, out_dims=32)
    cfg.model.head.update(embed_file=str(root / head_file), num_seen=3)
    for key in ('train', 'val', 'test'):
        dl = cfg.get(f'{key}_dataloader')
        if dl is None:
            continue
        dl.update(batch_size=2, num_workers=0, persistent_workers=False)
        dl.dataset.update(ann_file=str(root / f'{key}.json'), data_prefix=str(root / 'img'))
        for t in dl.dataset.pipeline:
            if t.type == 'ResizeEdge':
                t.scale = 32
            if t.type == 'CenterCrop':
                t.crop_size = 32
            if t.type == 'Cutout':
                t.shape = 16
    for key in ('val_evaluator', 'test_evaluator'):
        if cfg.get(key):
            cfg[key].update(num_seen=3, topk=(1, 2))
    cfg.work_dir = str(root / f'work_{head_file}')
    return cfg


def test_nuswide_config_trains_validates_and_tests(tiny_setup):
    from mmengine.runner import Runner
    root, name = tiny_setup
    cfg = shrink(load('nuswide_vitb16'), root, name, 'pool.safetensors')
    cfg.train_cfg.max_epochs = 2
    runner = Runner.from_cfg(cfg)
    clip_before = {k: v.clone() for k, v in runner.model.backbone.state_dict().items()}
    runner.train()
    assert all(torch.equal(v, clip_before[k]) for k, v in runner.model.backbone.state_dict().items())
    best = [k for k in runner.message_hub.runtime_info if 'best' in k]
    assert best, 'CheckpointHook tracked the best seen/score'
    metrics = runner.test()
    for key in ('zsl/mAP', 'zsl/F1@1', 'gzsl/mAP', 'gzsl/F1@2', 'seen/mAP'):
        assert key in metrics and 0 <= metrics[key] <= 100
    assert metrics['zsl/num_images'] == 2 and metrics['zsl/num_labels'] == 2


def test_zero_shot_config_tests_without_checkpoint(tiny_setup):
    from mmengine.runner import Runner
    root, name = tiny_setup
    cfg = shrink(load('zeroshot_clip_nuswide'), root, name, 'scene.safetensors')
    metrics = Runner.from_cfg(cfg).test()
    assert 'zsl/mAP' in metrics and 'gzsl/F1@2' in metrics


def test_tools_auto_scale_lr_and_show_dir(tiny_setup, tmp_path):
    """tools/train.py --auto-scale-lr on a QKS (mmpretrain) config scales the learning rate as mmengine does
    (x world_size * batch_size / base_batch_size) instead of raising, and tools/test.py --show-dir enables
    mmpretrain's VisualizationHook, which writes one picture per test image under WORK_DIR/<timestamp>/SHOW_DIR."""
    import glob
    import os
    import subprocess
    import sys
    root, name = tiny_setup
    cfg = shrink(load('nuswide_vitb16'), root, name, 'pool.safetensors')
    cfg.train_cfg.max_epochs = 1
    cfg_path = str(tmp_path / 'qks_tiny.py')
    cfg.dump(cfg_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')]))
    work = str(tmp_path / 'work')
    proc = subprocess.run([sys.executable, 'tools/train.py', cfg_path, '--work-dir', work, '--auto-scale-lr'],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert 'LR is set based on batch size of 64 and the current batch size is 2' in out
    ckpt = torch.load(osp.join(work, 'epoch_1.pth'), map_location='cpu', weights_only=True)
    assert ckpt['optimizer']['param_groups'][0]['lr'] == pytest.approx(1e-5 * 2 / 64)

    test_work = str(tmp_path / 'test')
    proc = subprocess.run([sys.executable, 'tools/test.py', cfg_path, osp.join(work, 'epoch_1.pth'), '--work-dir',
                           test_work, '--show-dir', 'vis'], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    pictures = sorted(glob.glob(osp.join(test_work, '*', 'vis', '*.png')))
    assert [osp.basename(p).split('.')[0] for p in pictures] == ['6', '7'], out[-2000:]
    assert 'zsl/mAP' in out


def test_official_train_data_rules():
    """Issue 13.8: the official loader drops training images without a seen positive and applies CutoutPIL(0.5)
    always with a random colour; the configs say so (both datasets share the NUS-WIDE training pipeline)."""
    for name in ('nuswide_vitb16', 'openimages_vitb16'):
        cfg = load(name)
        assert cfg.train_dataloader.dataset.filter_cfg == dict(filter_empty_gt=True)
        cut = [t for t in cfg.train_dataloader.dataset.pipeline if 'Cutout' in t['type']]
        assert len(cut) == 1 and cut[0].get('prob', 1.0) == 1.0 and cut[0].get('pad_val') == 'random'
        assert any(h['type'] == 'QVZSLConsistencyHook' for h in cfg.custom_hooks)


def test_train_cutout_matches_cutout_pil():
    """The shipped training Cutout: applied to every image, one hole of int(0.5 * 224 + 0.5) // 2 * 2 + 1 = 113
    pixels a side (PIL's rectangle includes both corners), shrunk (not moved) at the borders, one random colour per
    image (the official CutoutPIL; mmpretrain's Cutout(prob=0.5, pad_val=128) left half the images untouched)."""
    from mmpretrain.registry import TRANSFORMS
    from mmengine.registry import init_default_scope
    from PIL import ImageDraw
    init_default_scope('mmpretrain')
    import queryvision_mm  # noqa: F401
    cut = next(t for t in load('nuswide_vitb16').train_pipeline if 'Cutout' in t['type'])
    transform = TRANSFORMS.build(cut)
    np.random.seed(0)
    base = np.random.randint(0, 256, (224, 224, 3), dtype=np.uint8)
    colours, sides = set(), []
    for _ in range(60):
        out = transform(dict(img=base.copy()))['img']
        changed = (out != base).any(-1)
        assert changed.any(), 'Cutout applied to every image'
        rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
        r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
        box = out[r0:r1 + 1, c0:c1 + 1].reshape(-1, 3)
        assert (box == box[0]).all(), 'one colour fills the whole rectangle'
        colours.add(tuple(box[0]))
        # the same hole drawn by PIL around a centre consistent with the box
        yc = r0 + 56 if r0 > 0 else r1 - 56
        xc = c0 + 56 if c0 > 0 else c1 - 56
        ref = Image.fromarray(base.copy())
        ImageDraw.Draw(ref).rectangle([max(0, xc - 56), max(0, yc - 56), min(224, xc + 56), min(224, yc + 56)],
                                      fill=tuple(int(v) for v in box[0]))
        np.testing.assert_array_equal(np.asarray(ref), out)
        sides += [r1 - r0 + 1, c1 - c0 + 1]
    assert max(sides) == 113 and len(colours) > 50


def test_label_set_mismatch_stops_training_and_testing(tiny_setup):
    """Issue 13.7: a head with num_seen=4 on a file with 3 seen labels trained the unseen 'cat' as a seen label
    (always negative) without a word; an evaluator with num_seen=2 split ZSL/GZSL at the wrong column; an embedding
    file in another label order scored the wrong labels. Each now stops naming the config field and the file."""
    from mmengine.runner import Runner
    from queryvision_mm.utils.text_embeddings import load_class_embeddings, save_class_embeddings
    root, name = tiny_setup
    cfg = shrink(load('nuswide_vitb16'), root, name, 'pool.safetensors')
    cfg.model.head.num_seen = 4
    cfg.work_dir = str(root / 'work_mismatch_train')
    with pytest.raises(ValueError, match=r'model.head.num_seen=4 but .*train.json has metainfo.num_seen=3'):
        Runner.from_cfg(cfg).train()

    cfg = shrink(load('zeroshot_clip_nuswide'), root, name, 'scene.safetensors')
    cfg.test_evaluator.num_seen = 2
    cfg.work_dir = str(root / 'work_mismatch_test')
    with pytest.raises(ValueError, match=r'test_evaluator.num_seen=2 but .*test.json has metainfo.num_seen=3'):
        Runner.from_cfg(cfg).test()

    emb, names, _ = load_class_embeddings(str(root / 'scene.safetensors'))
    order = [1, 0, 2, 3, 4]
    save_class_embeddings(str(root / 'swapped.safetensors'), emb[order], [names[i] for i in order])
    cfg = shrink(load('zeroshot_clip_nuswide'), root, name, 'swapped.safetensors')
    cfg.work_dir = str(root / 'work_mismatch_names')
    with pytest.raises(ValueError, match=r"swapped.safetensors holds 5 labels, .*test.json has 5 classes; first "
                                         r"difference at index 0: 'water' vs 'sky'"):
        Runner.from_cfg(cfg).test()


def test_zero_shot_inferencer_ranks_by_raw_cosine(tiny_setup):
    """mmpretrain's ImageClassificationInferencer on the zero-shot config: pred_label = argmax of pred_scores, which
    are the raw 100 * cosine scores (a float32 sigmoid would tie them and make the argmax the first column)."""
    from mmpretrain.apis import ImageClassificationInferencer
    root, name = tiny_setup
    cfg = shrink(load('zeroshot_clip_nuswide'), root, name, 'scene.safetensors')
    # the inferencer loads images itself and strips only mmpretrain's own 'LoadImageFromFile' from the pipeline
    cfg.test_dataloader.dataset.pipeline[0] = dict(type='LoadImageFromFile')
    inferencer = ImageClassificationInferencer(cfg, pretrained=False, classes=SEEN + UNSEEN)
    res = inferencer(str(root / 'img' / '6.jpg'))[0]
    assert res['pred_scores'].shape == (5, ) and np.abs(res['pred_scores']).max() <= 100
    assert res['pred_label'] == int(np.argmax(res['pred_scores'])) and res['pred_class'] in SEEN + UNSEEN
    assert res['pred_score'] == pytest.approx(float(res['pred_scores'].max()))
