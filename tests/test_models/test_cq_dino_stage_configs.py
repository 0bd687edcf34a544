"""Shipped CQ-DINO configs at real scale (parsed, not trained): every stage-2 config starts from the checkpoint a
shipped stage-1 config writes, stage 1 starts from pretrained backbones, V3Det never validates during training
(mmengine's own loop decides, driven by the config's train_cfg) while its test set-up stays intact, collectives wait
long enough for the evaluation, and the official AMP / checkpointing settings are on."""
import copy
import glob
import os.path as osp
from unittest import mock

import pytest
import torch
from mmengine.config import Config
from mmengine.runner.loops import EpochBasedTrainLoop

from conftest import REPO


def load(path):
    return Config.fromfile(path)


def shipped():
    """{config name: Config} of configs/cq_dino, demos excluded."""
    paths = sorted(glob.glob(osp.join(REPO, 'configs', 'cq_dino', '*.py')))
    return {osp.splitext(osp.basename(p))[0]: load(p) for p in paths if not osp.basename(p).startswith('demo')}


@pytest.fixture(scope='module')
def configs():
    return shipped()


def stage1_output(cfg):
    """The file a stage-1 run writes at its end: <work_dir>/epoch_<max_epochs>.pth (CheckpointHook saves the last
    epoch whatever its interval unless save_last=False)."""
    assert cfg.default_hooks.checkpoint.get('save_last', True) is not False
    return osp.normpath(osp.join(cfg.work_dir, f'epoch_{cfg.train_cfg.max_epochs}.pth'))


def arch(cfg):
    out = {}
    for key in ('backbone', 'neck', 'language_model'):
        part = cfg.model[key].to_dict()
        part.pop('init_cfg', None)
        out[key] = part
    return out


def test_every_stage2_config_loads_what_a_shipped_stage1_config_writes(configs):
    stage1 = {n: c for n, c in configs.items() if c.model.get('selector_only')}
    stage2 = {n: c for n, c in configs.items() if not c.model.get('selector_only')}
    assert set(stage1) == {'v3det_stage1_swinb', 'v3det_stage1_swinl', 'v3det_stage1_r50', 'coco_stage1_r50',
                           'coco_stage1_swinl'}
    assert set(stage2) == {'v3det_swinb', 'v3det_swinl', 'v3det_r50', 'coco_r50', 'coco_swinl'}
    writes = {stage1_output(c): n for n, c in stage1.items()}
    assert len(writes) == len(stage1), 'two stage-1 configs write the same checkpoint'
    for name, cfg in stage2.items():
        assert cfg.get('load_from'), f'{name}: no load_from (backbone / selector would start from scratch)'
        src = writes.get(osp.normpath(cfg.load_from))
        assert src is not None, f'{name}: load_from={cfg.load_from} is written by no shipped stage-1 config'
        assert arch(stage1[src]) == arch(cfg), f'{name} and {src} differ in architecture'
        assert stage1[src].load_from is None


def test_demo_stage2_loads_what_the_demo_stage1_writes():
    """The demo pair follows the same rule as the real configs (tools/train.py of the stage-2 demo after stage 1
    starts from the pre-trained selector, not from a random one)."""
    s1, s2 = (load(osp.join(REPO, 'configs', 'cq_dino', f'{n}.py')) for n in ('demo_v3det_stage1', 'demo_v3det'))
    assert s1.model.selector_only and not s2.model.get('selector_only') and s1.load_from is None
    assert osp.normpath(s2.load_from) == stage1_output(s1)
    assert arch(s1) == arch(s2)


def test_stage1_backbones_start_from_pretrained_weights(configs):
    for name, cfg in configs.items():
        if not cfg.model.get('selector_only'):
            continue
        bb = cfg.model.backbone
        assert bb.type in ('SwinTransformer', 'ResNet')
        assert bb.init_cfg and bb.init_cfg.type == 'Pretrained' and bb.init_cfg.checkpoint, name
        if 'swinl' in name:
            assert bb.init_cfg.checkpoint.endswith('/swin_large_patch4_window12_384_22k.pth')
            assert bb.init_cfg.checkpoint.startswith('https://github.com/SwinTransformer/storage/releases/')
            assert bb.embed_dims == 192 and bb.window_size == 12 and bb.pretrain_img_size == 384


def val_epochs(train_cfg):
    """Epochs after which mmengine's EpochBasedTrainLoop runs validation with this train_cfg."""
    runner = mock.MagicMock()
    loader = torch.utils.data.DataLoader([0])
    loop = EpochBasedTrainLoop(runner, loader, max_epochs=train_cfg.max_epochs,
                               val_begin=train_cfg.get('val_begin', 1), val_interval=train_cfg.get('val_interval', 1))
    epochs = []
    runner.val_loop.run.side_effect = lambda: epochs.append(loop.epoch)
    loop.run()
    return epochs


def test_v3det_never_validates_during_training_and_tests_as_before(configs):
    for name, cfg in configs.items():
        if name.startswith('v3det') and not cfg.model.get('selector_only'):
            assert val_epochs(cfg.train_cfg) == [], name
            assert val_epochs(Config(dict(cfg.train_cfg, max_epochs=36))) == [], 'also with a longer schedule'
            coco, recall = cfg.test_evaluator
            assert coco.type == 'QVCocoMetric' and coco.use_mp_eval and coco.proposal_nums == [300]
            assert coco.ann_file.endswith('v3det_2023_v1_val.json') and recall.type == 'QVCategoryRecallMetric'
            assert cfg.test_dataloader.dataset.type == 'V3DetDataset' and cfg.test_cfg.type == 'TestLoop'
        elif name.startswith('coco') or cfg.model.get('selector_only'):
            assert val_epochs(cfg.train_cfg) == [cfg.train_cfg.max_epochs], f'{name} validates once, at its end'


def test_collective_timeout_covers_v3det_evaluation(configs):
    for name, cfg in configs.items():
        timeout = cfg.env_cfg.dist_cfg.get('timeout')
        assert timeout is not None and timeout >= 2 * 3600, f'{name}: timeout {timeout}'
    # mmengine passes it to init_process_group as a timedelta; so does our CPU (gloo) launcher shim
    from queryvision_mm.utils.dist import setup_cpu_distributed
    cfg = copy.deepcopy(configs['v3det_swinb'])
    with mock.patch('torch.distributed.is_initialized', return_value=False), \
            mock.patch('torch.distributed.init_process_group') as init, \
            mock.patch.dict('os.environ', dict(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1',
                                               MASTER_PORT='29999')), \
            mock.patch('torch.cuda.is_available', return_value=False):
        setup_cpu_distributed(cfg, 'pytorch')
    assert init.call_args.kwargs['timeout'].total_seconds() == cfg.env_cfg.dist_cfg.timeout == 4 * 3600


def test_official_memory_settings(configs):
    for name, cfg in configs.items():
        assert cfg.model.use_autocast is True, name  # backbone + neck in CUDA fp16 autocast (official)
        assert cfg.model.encoder.num_cp == cfg.model.encoder.num_layers == 6, name  # official num_cp=6
