"""``--amp`` (QVAmpOptimWrapper, bf16 autocast on CPU) through both SSOD detectors for one iteration of the
one-to-many stage: teacher pseudo-labels (NMS, homography projection), one-to-many targets, consistency / refined
queries (RoI Align) and the student losses run under autocast and stay finite (each broke on dtypes before)."""
import math

import pytest
from mmengine.config import Config
from mmengine.runner import Runner

from conftest import DEMO_CONFIG, REPO, shrink_semi_detr_cfg


@pytest.mark.parametrize('config', [DEMO_CONFIG, f'{REPO}/configs/sparse_semi_detr/demo_shapes.py'])
def test_amp_iteration(config, tiny_demo_data, tmp_path):
    cfg = shrink_semi_detr_cfg(Config.fromfile(config), data_root=tiny_demo_data, max_iters=1, switch_iter=1,
                               batch_size=2)
    cfg.optim_wrapper.type = 'QVAmpOptimWrapper'  # what tools/train.py --amp selects
    cfg.optim_wrapper.loss_scale = 'dynamic'
    cfg.train_cfg.val_begin = 10**9  # training only
    cfg.default_hooks.checkpoint.interval = 10**9
    cfg.default_hooks.checkpoint.save_last = False
    cfg.work_dir = str(tmp_path)
    runner = Runner.from_cfg(cfg)
    losses = []
    train_step = runner.model.train_step

    def spy(data, optim_wrapper):
        out = train_step(data, optim_wrapper)
        losses.append(out)
        return out

    runner.model.train_step = spy
    runner.train()
    assert type(runner.optim_wrapper).__name__ == 'QVAmpOptimWrapper' and runner.optim_wrapper.loss_scaler is None
    assert len(losses) == 1
    assert all(math.isfinite(float(v)) for v in losses[0].values()), losses[0]
    assert 'unsup_loss_cls' in losses[0] and 'sup_loss_bbox' in losses[0] and 'unsup_loss_consistency' in losses[0]
