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
