"""CI subset of the rehearsal (``tools/misc/rehearse.py``) for the detection papers: real architecture, 2 processes
(gloo), the real tools. The full rehearsal of every shipped config is a script (``--all``) recorded in
docs/rehearsal.md; these are the configs whose failure modes are multi-process ones:

* Sparse Semi-DETR COCO 10 % (the card's config): R50 from the torchvision release layout, 900 queries, 6+6
  layers, batch 5 per process (1:4), across the O2M->O2O switch, validation with both evaluators, test.
* CQ-DINO V3Det stage 1 Swin-B (13,204 categories, ImageNet-22k Swin-B release layout): before the fix, Swin's
  unused output norms stopped DDP at iteration 2.

Both run with QV_SLOW_TESTS=1 (CI budget of 15 min on 2 cores): Sparse Semi-DETR takes about 6 minutes here, the
Swin-B one about 2 minutes. CI keeps the cheap single-process check of the DDP failure mode
(tests/test_models/test_cq_dino_ddp_params.py: no trainable parameter without a gradient after one loss + backward of
every shipped CQ-DINO config) and the 2-process rehearsal of a classification config (test_rehearse_cls.py).
"""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def rehearse(tmp_path, config, *extra, timeout=1500):
    out = tmp_path / 'result.json'
    cmd = [sys.executable, osp.join(REPO, 'tools', 'misc', 'rehearse.py'), config, '--gpus', '2',
           '--work-dir', str(tmp_path / 'wd'), '--json', str(out), *extra]
    env = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1')
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    failed = {k: v.get('log_tail', '')[-2000:] for k, v in result['steps'].items() if not v['ok']}
    assert not failed, failed
    return result


def _logged(work_dir, key):
    values = []
    for root, _, files in os.walk(work_dir):
        if 'scalars.json' in files:
            with open(osp.join(root, 'scalars.json')) as f:
                values += [json.loads(line)[key] for line in f if key in json.loads(line)]
    return values


@pytest.mark.timeout(1800)
@pytest.mark.skipif(os.environ.get('QV_SLOW_TESTS') != '1',
                    reason='about 6 min on 2 cores (R50 DINO x2 at 304 px, batch 5 per process): outside the CI '
                    'budget; set QV_SLOW_TESTS=1 (last run recorded in docs/rehearsal.md)')
def test_sparse_semi_detr_coco_10pct_rehearses_with_two_processes(tmp_path):
    r = rehearse(tmp_path, 'configs/sparse_semi_detr/coco_10pct.py', '--iters', '2', '--img-scale', '96',
                 '--skip', 'resume', 'amp')
    assert r['ok'] and set(r['steps']) == {'train', 'test'}
    assert r['img_scale'] >= 300  # raised so that 900 queries find 900 encoder tokens
    # real architecture: two R50 DINO-4scale detectors (teacher + student) + the QRM
    assert 90e6 < r['params']['total'] < 110e6
    src = r['sources']
    bb = src['student.backbone']
    assert bb['pretrained'] > 0 and bb['random'] == 0  # torchvision's R50 through mmdet's init_cfg
    assert src['student.encoder']['random'] > 0  # the transformer is trained from scratch, as in the paper
    assert _logged(tmp_path / 'wd' / 'train', 'one_to_many') == [1.0, 0.0]  # across the O2M -> O2O switch
    unused = r['unused_params']
    assert unused['find_unused_parameters'] and unused['unused'] == []
    with open(tmp_path / 'wd' / 'test.log') as f:
        log = f.read()
    assert 'bbox_mAP' in log and 'duplicate' in log.lower()


@pytest.mark.timeout(1800)
@pytest.mark.skipif(os.environ.get('QV_SLOW_TESTS') != '1',
                    reason='about 2 min on 2 cores (Swin-B, 13,204 categories, 2 processes): outside the CI budget; '
                    'set QV_SLOW_TESTS=1 (the DDP failure mode stays covered by test_cq_dino_ddp_params.py)')
def test_cq_dino_v3det_stage1_swinb_trains_past_iteration_two_with_ddp(tmp_path):
    r = rehearse(tmp_path, 'configs/cq_dino/v3det_stage1_swinb.py', '--iters', '2', '--img-scale', '64',
                 '--skip', 'resume', 'amp')
    assert r['ok'] and set(r['steps']) == {'train', 'test'}
    assert r['facts']['epochs'] == 2 and r['facts']['iters_per_epoch'] == 1  # 2 DDP iterations (crashed at 2)
    unused = r['unused_params']
    assert not unused['find_unused_parameters'] and unused['unused'] == []
    src = r['sources']
    assert src['backbone']['pretrained'] > 0.9 * (src['backbone']['total'] - src['backbone']['fixed'])
    assert src['language_model']['total'] > 13204 * 768  # one 768-d query per V3Det category
