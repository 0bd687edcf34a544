"""tools/slurm_train.sh / slurm_test.sh (issue 16, item 6) in mmdet's form, run with a fake `srun` on PATH that
records its argv; and tools/train.py / test.py accept `--launcher slurm`."""
import os
import os.path as osp
import stat
import subprocess

import pytest

from conftest import REPO, load_module_from_path


@pytest.fixture
def fake_srun(tmp_path):
    bindir = tmp_path / 'bin'
    bindir.mkdir()
    log = tmp_path / 'srun_args.txt'
    srun = bindir / 'srun'
    srun.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "{log}"\necho "PYTHONPATH=$PYTHONPATH" >> "{log}"\n')
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f'{bindir}:{os.environ["PATH"]}', GPUS='16', GPUS_PER_NODE='8', CPUS_PER_TASK='4',
               SRUN_ARGS='--quotatype=auto --time=1:00:00')
    return env, log


def test_slurm_train(fake_srun, tmp_path):
    env, log = fake_srun
    proc = subprocess.run(['bash', osp.join(REPO, 'tools', 'slurm_train.sh'), 'gpu_part', 'job 1',
                           'configs/sparse_semi_detr/coco_10pct.py', 'work_dirs/x', '--amp', '--cfg-options',
                           'a=1 b'], env=env, capture_output=True, text=True, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    args = log.read_text().splitlines()
    assert args[:2] == ['-p', 'gpu_part'] and '--job-name=job 1' in args
    for opt in ('--gres=gpu:8', '--ntasks=16', '--ntasks-per-node=8', '--cpus-per-task=4', '--kill-on-bad-exit=1',
                '--quotatype=auto', '--time=1:00:00'):
        assert opt in args, opt
    i = args.index(osp.join(REPO, 'tools', 'train.py'))
    assert args[i - 1] == '-u'
    assert args[i + 1:-1] == ['configs/sparse_semi_detr/coco_10pct.py', '--work-dir=work_dirs/x', '--launcher=slurm',
                              '--amp', '--cfg-options', 'a=1 b']
    assert args[-1].startswith(f'PYTHONPATH={REPO}')


def test_slurm_test_and_usage(fake_srun, tmp_path):
    env, log = fake_srun
    proc = subprocess.run(['bash', osp.join(REPO, 'tools', 'slurm_test.sh'), 'p', 'j', 'configs/cq_dino/v3det_swinb.py',
                           'ckpt.pth', '--out', 'r.pkl'], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    args = log.read_text().splitlines()
    i = args.index(osp.join(REPO, 'tools', 'test.py'))
    assert args[i + 1:-1] == ['configs/cq_dino/v3det_swinb.py', 'ckpt.pth', '--launcher=slurm', '--out', 'r.pkl']
    proc = subprocess.run(['bash', osp.join(REPO, 'tools', 'slurm_train.sh'), 'p', 'j'], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and 'usage' in proc.stderr


def test_tools_accept_launcher_slurm(monkeypatch):
    monkeypatch.syspath_prepend(osp.join(REPO, 'tools'))  # the tools import their _bootstrap helper
    train = load_module_from_path('qv_train_tool', osp.join(REPO, 'tools', 'train.py'))
    test = load_module_from_path('qv_test_tool', osp.join(REPO, 'tools', 'test.py'))
    assert train.parse_args(['c.py', '--launcher', 'slurm', '--work-dir=w']).launcher == 'slurm'
    assert test.parse_args(['c.py', 'k.pth', '--launcher=slurm']).launcher == 'slurm'
