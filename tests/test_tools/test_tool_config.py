"""The tools' config step (queryvision_mm/utils/cli.py): default work dirs that never collide between shipped configs
(Semi-DETR and Sparse Semi-DETR have configs of the same names), --work-dir and a config's own work_dir win, and
--auto-scale-lr works for mmdet and mmpretrain configs."""
import glob
import os.path as osp

import pytest
from mmengine.config import Config

from conftest import REPO


def _load(config, work_dir=None, cfg_options=None):
    from queryvision_mm.utils.cli import load_tool_config
    return load_tool_config(config, cfg_options, 'none', work_dir)


def test_ssod_papers_resolve_to_different_work_dirs(monkeypatch):
    monkeypatch.chdir(REPO)
    semi = _load(osp.join(REPO, 'configs/semi_detr/coco_10pct.py'))
    sparse = _load('configs/sparse_semi_detr/coco_10pct.py')  # as the card's command, relative to the repo
    assert osp.normpath(semi.work_dir) == osp.normpath('work_dirs/semi_detr_coco_10pct')
    assert osp.normpath(sparse.work_dir) == osp.normpath('work_dirs/sparse_semi_detr_coco_10pct')
    # explicit --work-dir wins; --cfg-options work_dir=... too
    assert _load('configs/sparse_semi_detr/coco_10pct.py', work_dir='/tmp/mine').work_dir == '/tmp/mine'
    assert _load('configs/sparse_semi_detr/coco_10pct.py', cfg_options=dict(work_dir='w2')).work_dir == 'w2'


def test_a_config_inheriting_ours_gets_its_own_work_dir(tmp_path):
    mine = tmp_path / 'experiments' / 'my_sparse.py'
    mine.parent.mkdir()
    mine.write_text(f"_base_ = '{REPO}/configs/sparse_semi_detr/coco_10pct.py'\n")
    assert osp.normpath(_load(str(mine)).work_dir) == osp.normpath('work_dirs/experiments_my_sparse')


def test_every_shipped_config_has_its_own_default_work_dir():
    seen = {}
    for path in sorted(glob.glob(osp.join(REPO, 'configs', '*', '*.py'))):
        if '/_base_/' in path:
            continue
        work_dir = osp.normpath(_load(path).work_dir)
        assert work_dir not in seen, f'{path} and {seen[work_dir]} share {work_dir}'
        seen[work_dir] = path
    assert len(seen) >= 25


@pytest.mark.parametrize('config,base', [('configs/qks/nuswide_vitb16.py', 64),
                                         ('configs/semi_detr/coco_10pct.py', 40)])
def test_auto_scale_lr_enables_mmengine_scaling_for_both_scopes(config, base):
    """mmpretrain configs have no auto_scale_lr.enable (tools/train.py used to raise); the scaling itself runs end to
    end in tests/test_models/test_qks_configs.py."""
    from queryvision_mm.utils.cli import enable_auto_scale_lr
    cfg = enable_auto_scale_lr(_load(osp.join(REPO, config)))
    assert cfg.auto_scale_lr.enable is True and cfg.auto_scale_lr.base_batch_size == base


def test_auto_scale_lr_without_base_batch_size_is_a_clear_error():
    from queryvision_mm.utils.cli import enable_auto_scale_lr
    with pytest.raises(RuntimeError, match='auto_scale_lr.base_batch_size'):
        enable_auto_scale_lr(Config(dict(auto_scale_lr=dict(enable=False))))
