"""End-to-end: tools/train.py, tools/test.py, resume across the stage switch, dist_train.sh on CPU."""
import glob
import json
import os
import os.path as osp
import pickle
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

from conftest import DEMO_CONFIG, REPO, shrink_semi_detr_cfg

PY = sys.executable


def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([REPO, osp.dirname(osp.abspath(__file__)), env.get('PYTHONPATH', '')])
    env['PYTHON'] = PY
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


def run(args, timeout=600, **kw):
    proc = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout, **kw)
    return proc, proc.stdout + proc.stderr


def make_cfg(tmp_path, data_root, name='cfg.py', edit=None, **kw):
    cfg = shrink_semi_detr_cfg(Config.fromfile(DEMO_CONFIG), data_root=data_root, **kw)
    if edit is not None:
        edit(cfg)
    path = str(tmp_path / name)
    cfg.dump(path)
    return path


def state(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def test_train_then_test_tool(tiny_demo_data, tmp_path):
    cfg = make_cfg(tmp_path, tiny_demo_data, max_iters=4, switch_iter=2)
    work = str(tmp_path / 'work')
    proc, out = run([PY, 'tools/train.py', cfg, '--work-dir', work])
    assert proc.returncode == 0, out[-4000:]
    assert 'iteration 2: switching to one-to-one matching' in out
    assert 'teacher/coco/bbox_mAP' in out and 'student/coco/bbox_mAP' in out
    ckpt = osp.join(work, 'iter_4.pth')
    sd = state(ckpt)['state_dict']
    assert bool(sd['one_to_many_stage']) is False
    assert any(k.startswith('teacher.') for k in sd) and any(k.startswith('projector.') for k in sd)

    pkl = str(tmp_path / 'res.pkl')
    proc, out = run([PY, 'tools/test.py', cfg, ckpt, '--work-dir', str(tmp_path / 'test'), '--out', pkl])
    assert proc.returncode == 0, out[-4000:]
    assert re.search(r'coco/bbox_mAP: [0-9.]+', out)
    assert 'bbox_mAP_s' in out
    with open(pkl, 'rb') as f:
        results = pickle.load(f)
    assert len(results) == 6 and 'pred_instances' in results[0]


def test_resume_across_stage_switch(tiny_demo_data, tmp_path):
    """A run interrupted at iteration 2 and resumed lands in the right stage and keeps the EMA ramp."""
    full = make_cfg(tmp_path, tiny_demo_data, 'full.py', max_iters=4, switch_iter=3)
    part = make_cfg(tmp_path, tiny_demo_data, 'part.py', max_iters=2, switch_iter=3)
    w_part = str(tmp_path / 'part')
    proc, out = run([PY, 'tools/train.py', part, '--work-dir', w_part])
    assert proc.returncode == 0, out[-4000:]
    ck2 = state(osp.join(w_part, 'iter_2.pth'))
    assert bool(ck2['state_dict']['one_to_many_stage']) is True

    # resume: same work dir, the 4-iteration config, --resume (auto -> last_checkpoint)
    proc, out = run([PY, 'tools/train.py', full, '--work-dir', w_part, '--resume'])
    assert proc.returncode == 0, out[-4000:]
    assert 'resumed epoch: 0, iter: 2' in out
    assert 'iteration 3: switching to one-to-one matching' in out
    assert 'iteration 2: switching' not in out, 'iteration 2 is still one-to-many after resuming'
    assert re.search(r'Iter\(train\) \[3/4\].*ema_student_weight: 0\.2500', out), 'EMA ramp continues at 1/(2+2)'
    ck4 = state(osp.join(w_part, 'iter_4.pth'))
    assert bool(ck4['state_dict']['one_to_many_stage']) is False
    assert ck4['meta']['iter'] == 4
    # teacher is the EMA of the student, not a copy, and was carried over
    sd = ck4['state_dict']
    k = 'student.bbox_head.cls_branches.0.weight'
    assert not torch.equal(sd[k], sd['teacher' + k[len('student'):]])


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _deterministic(cfg, batch_size, record_dir):
    """Remove everything that makes 1 x 2B and 2 x B differ by construction (random augmentation, per-batch
    dynamic DN groups, per-rank loss normalisers), keeping the Semi-DETR model, hooks and losses."""
    # one fixed size: with varying sizes, a batch of 10 and two batches of 5 are padded differently, and
    # padding changes the backbone features near the borders
    resize = dict(type='Resize', scale=(112, 112), keep_ratio=False)
    det_pipe = lambda: [resize, dict(type='PackDetInputs', meta_keys=cfg.meta_keys)]  # noqa: E731
    lab, unlab = cfg.train_dataloader.dataset.datasets
    lab.pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
                    resize,
                    dict(type='MultiBranch', branch_field=cfg.branch_field,
                         sup=dict(type='PackDetInputs', meta_keys=cfg.meta_keys))]
    unlab.pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadEmptyAnnotations'),
                      dict(type='MultiBranch', branch_field=cfg.branch_field, unsup_teacher=det_pipe(),
                           unsup_student=det_pipe())]
    cfg.train_dataloader.sampler = dict(type='MultiSourceSampler', batch_size=batch_size, source_ratio=[1, 4])
    cfg.train_dataloader.batch_size = batch_size
    det = cfg.model.detector
    # mmdet asserts noise scales > 0; 1e-8 makes the DN queries deterministic in effect
    det.dn_cfg.update(label_noise_scale=1e-8, box_noise_scale=1e-8, group_cfg=dict(dynamic=False, num_groups=2))
    det.bbox_head.sync_cls_avg_factor = True
    # all-background targets (no positives anywhere) clamp DETR's normaliser to 1 on every rank, which makes that
    # term a per-rank sum rather than a global mean: the split dependence is DETR's loss definition, not a bug
    cfg.model.semi_train_cfg.train_empty_pseudo = False
    cfg.optim_wrapper.optimizer = dict(type='SGD', lr=0.01, momentum=0.0)
    # random weights: the teacher's discrete choices (score thresholds, top-k, GMM split) can flip on float
    # summation-order differences when two values nearly tie. The test keeps the set-up it was established with
    # (random ResNet-18, ImageNet mean/std), which has no such near-tie for this seed; the demo's random
    # EfficientNet-Lite and its (x - 127) / 128 normalisation each give one at iteration 1 (1e-4 loss difference)
    det.backbone = dict(type='ResNet', depth=18, num_stages=4, out_indices=(1, 2, 3), frozen_stages=-1,
                        norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True, style='pytorch', init_cfg=None)
    det.neck.in_channels = [128, 256, 512]
    # and mmdet DINO's neck without conv biases (the configs now keep the official biases): the extra parameters
    # change the random initialisation, which gives such a near-tie at iteration 2 (1.6e-4 loss difference)
    det.neck.bias = 'auto'
    pre = dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
               bgr_to_rgb=True, pad_size_divisor=1)
    det.data_preprocessor = pre
    cfg.model.data_preprocessor.data_preprocessor = pre
    cfg.default_hooks.checkpoint.interval = 1
    cfg.default_hooks.checkpoint.max_keep_ckpts = 5
    cfg.train_cfg.val_interval = 100
    cfg.custom_imports = dict(imports=['queryvision_mm', 'qv_test_loss_recorder'], allow_failed_imports=False)
    cfg.custom_hooks.append(dict(type='QVTestLossRecorderHook', out_dir=record_dir))


def _losses(work_dir):
    out = {}
    for path in glob.glob(osp.join(work_dir, 'losses_rank*.jsonl')):
        for line in open(path):
            rec = json.loads(line)
            out.setdefault(rec['iter'], []).append(rec['loss'])
    return out


def test_dist_train_two_processes_matches_one(tiny_demo_data, tmp_path):
    """tools/dist_train.sh CONFIG 2 (gloo on CPU) follows the same weight trajectory as one process with the
    same total batch, iteration by iteration (one-to-one stage: the consistency branch normalises per rank)."""
    kw = dict(max_iters=3, switch_iter=0)
    w1, w2 = str(tmp_path / 'single'), str(tmp_path / 'dist')
    os.makedirs(w1)
    os.makedirs(w2)
    single = make_cfg(tmp_path, tiny_demo_data, 'single.py', edit=lambda c: _deterministic(c, 10, w1), **kw)
    dist = make_cfg(tmp_path, tiny_demo_data, 'dist.py', edit=lambda c: _deterministic(c, 5, w2), **kw)
    proc, out = run([PY, 'tools/train.py', single, '--work-dir', w1])
    assert proc.returncode == 0, out[-4000:]
    env_port = dict(PORT=str(_free_port()))
    proc = subprocess.run(['bash', 'tools/dist_train.sh', dist, '2', '--work-dir', w2], cwd=REPO,
                          env={**_env(), **env_port}, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert 'gloo' in out
    # loss trajectory: the single-process loss equals the mean of the two ranks' losses (normalisers are
    # averaged across ranks), iteration by iteration
    l1, l2 = _losses(w1), _losses(w2)
    assert sorted(l1) == sorted(l2) == [0, 1, 2]
    for it in l1:
        assert len(l1[it]) == 1 and len(l2[it]) == 2
        assert l2[it][0] != pytest.approx(l2[it][1]), 'ranks must see different images'
        assert sum(l2[it]) / 2 == pytest.approx(l1[it][0], rel=1e-4), f'loss at iteration {it}'
    for it in (1, 2, 3):
        a = state(osp.join(w1, f'iter_{it}.pth'))['state_dict']
        b = state(osp.join(w2, f'iter_{it}.pth'))['state_dict']
        moved = 0
        for k, v in a.items():
            if not k.startswith('student.') or not v.is_floating_point():
                continue
            torch.testing.assert_close(b[k], v, rtol=1e-4, atol=2e-6, msg=f'{k} at iteration {it}')
            moved += 1
        assert moved > 50
    first = state(osp.join(w1, 'iter_1.pth'))['state_dict']
    last = state(osp.join(w1, 'iter_3.pth'))['state_dict']
    assert not torch.equal(first['student.bbox_head.cls_branches.0.weight'],
                           last['student.bbox_head.cls_branches.0.weight']), 'training must move the weights'


def test_missing_annotation_file_names_the_file(tiny_demo_data, tmp_path):
    missing = osp.join(tiny_demo_data, 'annotations', 'does_not_exist.json')

    def edit(cfg):
        cfg.train_dataloader.dataset.datasets[1].ann_file = 'annotations/does_not_exist.json'

    cfg = make_cfg(tmp_path, tiny_demo_data, edit=edit)
    proc, out = run([PY, 'tools/train.py', cfg, '--work-dir', str(tmp_path / 'w')])
    assert proc.returncode != 0
    assert missing in out or 'does_not_exist.json' in out


def test_training_skips_an_unreadable_image(tiny_demo_data, tmp_path):
    """tools/train.py trains through a corrupt unlabeled image (the base config's QVLoadImageFromFile: skipped, a
    warning names it). The limit and the test-mode error: tests/test_datasets/test_robust_loading.py."""
    data = str(tmp_path / 'data')
    shutil.copytree(tiny_demo_data, data)
    ann = osp.join(data, 'annotations', 'instances_unlabeled.json')
    coco = json.load(open(ann))
    coco['images'] = coco['images'][:4]  # each of 4 unlabeled images is drawn in 2 iterations of 4 unlabeled images
    coco['annotations'] = [a for a in coco['annotations'] if a['image_id'] in {i['id'] for i in coco['images']}]
    json.dump(coco, open(ann, 'w'))
    bad = osp.join(data, 'images', coco['images'][0]['file_name'])
    with open(bad, 'wb') as f:
        f.write(b'this is not a jpeg')

    def edit(cfg):  # an ungrouped sampler: every unlabeled image is drawn whatever its aspect ratio
        cfg.train_dataloader.sampler = dict(type='MultiSourceSampler', batch_size=5, source_ratio=[1, 4])
        cfg.train_cfg.val_interval = 100  # no validation: training is what is tested

    cfg = make_cfg(tmp_path, data, edit=edit, max_iters=2, switch_iter=1)
    work = str(tmp_path / 'w')
    proc, out = run([PY, 'tools/train.py', cfg, '--work-dir', work])
    assert proc.returncode == 0, out[-4000:]
    assert f'skipped unreadable image {bad}' in out
    assert osp.isfile(osp.join(work, 'iter_2.pth'))



def test_dist_test_matches_single_process_and_visualization(tiny_demo_data, tmp_path):
    """tools/dist_test.sh CONFIG CKPT 2 (gloo) gives the same COCO AP as tools/test.py (one image per batch, so that
    batch padding is the same), and the pseudo-label picture tool writes a PNG."""
    cfg = make_cfg(tmp_path, tiny_demo_data, max_iters=2, switch_iter=1)
    work = str(tmp_path / 'work')
    proc, out = run([PY, 'tools/train.py', cfg, '--work-dir', work])
    assert proc.returncode == 0, out[-4000:]
    ckpt = osp.join(work, 'iter_2.pth')
    opts = ['--cfg-options', 'test_dataloader.batch_size=1']
    proc, single = run([PY, 'tools/test.py', cfg, ckpt, '--work-dir', str(tmp_path / 't1')] + opts)
    assert proc.returncode == 0, single[-4000:]
    proc = subprocess.run(['bash', 'tools/dist_test.sh', cfg, ckpt, '2', '--work-dir', str(tmp_path / 't2')] + opts,
                          cwd=REPO, env={**_env(), 'PORT': str(_free_port())}, capture_output=True, text=True,
                          timeout=600)
    dist = proc.stdout + proc.stderr
    assert proc.returncode == 0, dist[-4000:]
    pattern = r'bbox_mAP_copypaste: ([-0-9. ]+)'
    assert re.findall(pattern, single)[-1] == re.findall(pattern, dist)[-1]

    png = str(tmp_path / 'pseudo.png')
    proc, out = run([PY, 'tools/misc/visualize_pseudo_labels.py', cfg, ckpt, '--out', png, '--num-images', '2'])
    assert proc.returncode == 0, out[-4000:]
    from PIL import Image
    with Image.open(png) as im:
        w, h = im.size
    assert w > 400 and h > 300
