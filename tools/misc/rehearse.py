#!/usr/bin/env python
# Copyright (c) queryvision_mm contributors. All rights reserved.
"""Rehearse a shipped config the way it will run on 8 GPUs, before anyone spends GPU-days on it.

    python tools/misc/rehearse.py CONFIG [--gpus 2] [--iters 4] [--img-scale 128] [--work-dir DIR]
    python tools/misc/rehearse.py --all [--report docs/rehearsal.md]     # every shipped config (slow: hours on CPU)

For one config it (1) writes a tiny dataset in the config's own format at the paths the config expects, inside a
sandbox that becomes the tools' working directory; (2) puts random checkpoints of the same architecture and key
layout where the config's pretrained files are looked up (URLs: ``$TORCH_HOME/hub/checkpoints``), and runs the
config's stage-1 rehearsal first when its ``load_from`` lies in another shipped config's ``work_dir``;
(3) shrinks only image scale, data size, iteration counts and schedule points (``queryvision_mm.testing.rehearsal.
plan``); (4) runs the real tools with N processes (gloo on CPU, NCCL on GPU): training across the stage switch with
validation by the config's evaluators and checkpoints, ``--resume`` from the middle checkpoint, ``tools/test.py`` on
the final checkpoint, and a short ``--amp`` run (bf16 autocast on CPU); (5) reports parameters (total / trainable),
where every weight comes from, trainable parameters without a gradient (the fact behind DDP's
``find_unused_parameters``), s/iter and peak memory. Exit code 0 only when every step passed.
"""
import argparse
import glob
import json
import os
import os.path as osp
import shutil
import sys
import time

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('config', nargs='?', help='config file (omit with --all)')
    p.add_argument('--all', action='store_true', help='rehearse every shipped config and write --report')
    p.add_argument('--gpus', type=int, default=2, help='processes (one per GPU; gloo on CPU)')
    p.add_argument('--iters', type=int, default=4, help='training iterations (epoch configs: 2 epochs of iters/2)')
    p.add_argument('--img-scale', type=int, default=128, help='short side of the largest resize of the config')
    p.add_argument('--work-dir', help='default: work_dirs/rehearsal/<config path>')
    p.add_argument('--workers', type=int, default=0,
                   help='data-loading workers per loader, at most the config\'s (0: in the main process, the least '
                   'memory on a CPU machine)')
    p.add_argument('--stage1-checkpoint', help='use this file as the stage-1 output instead of rehearsing stage 1')
    p.add_argument('--skip', nargs='*', default=[], choices=['resume', 'test', 'amp', 'provenance'],
                   help='steps to leave out')
    p.add_argument('--timeout', type=float, default=4 * 3600, help='seconds per step')
    from mmengine.config import DictAction
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                   help='overrides of CONFIG (not of its stage-1 config) before the rehearsal shrinks it, e.g. a '
                   'smaller per-GPU batch on a machine without the memory for the real one; recorded in the JSON '
                   'and shown in the report')
    p.add_argument('--json', help='write the result as JSON here')
    p.add_argument('--report', default=osp.join(REPO, 'docs', 'rehearsal.md'), help='--all: markdown report')
    p.add_argument('--include', nargs='*', help='--all: only configs whose path contains one of these')
    p.add_argument('--exclude', nargs='*', default=[], help='--all: skip configs whose path contains one of these')
    return p.parse_args(argv)


def load_config(config: str, args):
    """The shipped config with the command line's ``--cfg-options`` (before the rehearsal shrinks it)."""
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    if getattr(args, 'cfg_options', None):
        cfg.merge_from_dict(args.cfg_options)
    return cfg


def _final_checkpoint(work_dir: str) -> str:
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def _import_config_modules(cfg):
    from mmengine.registry import init_default_scope
    from mmengine.utils import import_modules_from_strings
    import queryvision_mm  # noqa: F401
    from queryvision_mm.utils import setup_safe_checkpoint_loading
    setup_safe_checkpoint_loading()
    imports = (cfg.get('custom_imports') or {}).get('imports', [])
    import_modules_from_strings(imports, allow_failed_imports=False)
    scope = cfg.get('default_scope', 'mmdet')
    if scope == 'mmdet':
        from mmdet.utils import register_all_modules
    else:
        from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    init_default_scope(scope)


def _release_memory() -> None:
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except OSError:  # not glibc
        pass


def _load_state(path: str):
    import torch
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    return ckpt.get('state_dict', ckpt)


def rehearse(config: str, args) -> dict:
    from queryvision_mm.testing.rehearsal import (DATA_WRITERS, STEP_PLANS, WEIGHT_PROVIDERS, RehearsalContext,
                                                  WeightRecord)
    from queryvision_mm.testing.rehearsal import data_det, weights_det  # noqa: F401  (register writers)
    from queryvision_mm.testing.rehearsal.plan import iter_datasets, loaders, producer_of, rehearsal_config
    from queryvision_mm.testing.rehearsal.runner import (iteration_times, logged, median_or_none, run_step, tail,
                                                          tool_command)
    from queryvision_mm.testing.rehearsal import data_cls, weights_cls  # noqa: F401  (QKS, MaO)

    config = osp.abspath(config)
    rel = osp.relpath(config, REPO)
    wd = osp.abspath(args.work_dir or osp.join(REPO, 'work_dirs', 'rehearsal', osp.splitext(rel)[0]))
    shutil.rmtree(wd, ignore_errors=True)
    sandbox, torch_home = osp.join(wd, 'sandbox'), osp.join(wd, 'torch_home')
    os.makedirs(sandbox)
    from queryvision_mm.testing.rehearsal.report import _git_commit
    from queryvision_mm.testing.rehearsal.runner import memory_kind
    result = dict(config=rel, commit=_git_commit(REPO), gpus=args.gpus, iters=args.iters, img_scale=args.img_scale,
                  steps={}, ok=False, started=time.strftime('%Y-%m-%d %H:%M:%S'), memory=memory_kind())
    cfg = load_config(config, args)
    if getattr(args, 'cfg_options', None):
        result['cfg_options'] = dict(args.cfg_options)
    _import_config_modules(cfg)
    rcfg, facts = rehearsal_config(cfg, args.iters, args.img_scale, workers=args.workers)
    result['facts'] = facts
    result['img_scale'] = facts['img_scale']

    batch = rcfg.train_dataloader.get('batch_size', 1) if rcfg.get('train_dataloader') else 1
    per_epoch = facts.get('iters_per_epoch', 1)
    num_images = max(4, per_epoch * batch * args.gpus) if facts.get('by_epoch') else max(4, batch * args.gpus)
    ctx = RehearsalContext(root=sandbox, torch_home=torch_home, num_images=num_images,
                           img_scale=facts['img_scale'] if facts['img_scale'] > 0 else 800)
    num_classes = cfg.get('num_classes')
    if num_classes:
        ctx.extra['num_classes'] = int(num_classes)
    cwd = os.getcwd()
    os.chdir(sandbox)
    try:
        # mmpretrain / MaO descriptor configs may also hold a top-level ``dataset``
        top = [rcfg.dataset] if isinstance(rcfg.get('dataset'), dict) and 'type' in rcfg.dataset else []
        for ds_root in [loader['dataset'] for loader in loaders(rcfg)] + top:
            for ds in iter_datasets(ds_root):
                if ds['type'] not in DATA_WRITERS:
                    raise NotImplementedError(f'rehearsal: no data writer for dataset type {ds["type"]!r} ({rel})')
                DATA_WRITERS[ds['type']](ds, ctx)
        for provider in WEIGHT_PROVIDERS:
            provider(rcfg, ctx)
        load_state = None
        if rcfg.get('load_from'):
            dst = ctx.path(rcfg.load_from) if not osp.isabs(rcfg.load_from) else rcfg.load_from
            if args.stage1_checkpoint:
                src, how = args.stage1_checkpoint, 'given stage-1 checkpoint'
            elif producer_of(rcfg.load_from, config):
                s1 = producer_of(rcfg.load_from, config)
                s1_args = argparse.Namespace(**vars(args))
                s1_args.work_dir, s1_args.json, s1_args.stage1_checkpoint = osp.join(wd, 'stage1'), None, None
                s1_args.cfg_options = None
                os.chdir(cwd)
                s1_result = rehearse(s1, s1_args)
                os.chdir(sandbox)
                result['stage1'] = s1_result
                if not s1_result['ok']:
                    raise RuntimeError(f'rehearsal: stage 1 ({s1_result["config"]}) failed')
                src, how = s1_result['final_checkpoint'], f'stage-1 rehearsal of {s1_result["config"]}'
            else:
                raise FileNotFoundError(f'rehearsal: load_from={rcfg.load_from!r} is not produced by any shipped '
                                        f'config (none has a work_dir containing it); give --stage1-checkpoint')
            os.makedirs(osp.dirname(dst) or '.', exist_ok=True)
            shutil.copyfile(src, dst)
            ctx.weights.append(WeightRecord('model', 'load_from', rcfg.load_from, dst, how))
            load_state = _load_state(dst)
        rcfg_path = osp.join(sandbox, 'rehearsal_config.py')
        rcfg.dump(rcfg_path)
        result['weights'] = [vars(w) for w in ctx.weights]
        if 'provenance' not in args.skip:
            from queryvision_mm.testing.rehearsal.provenance import weight_sources
            old_home = os.environ.get('TORCH_HOME')
            os.environ['TORCH_HOME'] = torch_home  # Pretrained init_cfg URLs resolve to the stand-ins
            try:
                files = [w.written for w in ctx.weights if w.kind != 'load_from']
                sources = weight_sources(rcfg, load_state, files)
            finally:
                os.environ.pop('TORCH_HOME') if old_home is None else os.environ.update(TORCH_HOME=old_home)
                _release_memory()  # the three model copies, before the N training processes start
            result['sources'] = sources
            result['params'] = dict(total=sum(r['total'] for r in sources.values()),
                                    trainable=sum(r['trainable'] for r in sources.values()))
    finally:
        os.chdir(cwd)

    env = dict(TORCH_HOME=torch_home, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', HF_DATASETS_OFFLINE='1',
               OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // args.gpus)))
    n = args.gpus

    def step(name, tool, tool_args):
        return run(name, tool_command(tool, n, tool_args))

    def run(name, argv):  # for STEP_PLANS: a full command in the sandbox
        res = run_step(name, argv, sandbox, env, osp.join(wd, f'{name}.log'), args.timeout)
        result['steps'][name] = dict(ok=res.ok, rc=res.rc, seconds=round(res.seconds, 1),
                                     peak_rss_mb=round(res.peak_rss_mb))
        print(f'[rehearse] {rel}: {name} {"ok" if res.ok else "FAILED"} ({res.seconds:.0f} s)', flush=True)
        if not res.ok:
            result['steps'][name]['log_tail'] = tail(res.log)
        return res

    run.nproc = n   # STEP_PLANS launch their own multi-process tools (MaO extraction) with it
    handled = False
    for plan in STEP_PLANS:
        handled = plan(rcfg, rcfg_path, wd, run) or handled
    train_dir = osp.join(wd, 'train')
    if handled:
        pass
    elif rcfg.get('train_dataloader') and rcfg.get('train_cfg'):
        res = step('train', 'train', [rcfg_path, '--work-dir', train_dir])
        if res.ok:
            result['final_checkpoint'] = _final_checkpoint(train_dir)
            times = iteration_times(train_dir)
            result['s_per_iter'] = median_or_none(times)
            result['cuda_memory_mb'] = max(logged(train_dir, 'memory'), default=None)
            probe = osp.join(train_dir, 'unused_params.json')
            if osp.isfile(probe):
                with open(probe) as f:
                    result['unused_params'] = json.load(f)
            if 'resume' not in args.skip:
                mid = osp.join(train_dir, facts['resume_from'])
                r = step('resume', 'train', [rcfg_path, '--work-dir', osp.join(wd, 'resume'), '--resume', mid])
                if r.ok:
                    with open(r.log, errors='replace') as f:
                        resumed = 'resumed epoch' in f.read()
                    result['steps']['resume']['resumed_from_middle'] = resumed
                    result['steps']['resume']['ok'] = resumed
                    probe = osp.join(wd, 'resume', 'unused_params.json')
                    if osp.isfile(probe):  # first iteration after the resume point (after the stage switch)
                        with open(probe) as f:
                            result['unused_params_resumed'] = json.load(f)
            if 'test' not in args.skip:
                if rcfg.get('test_dataloader'):
                    step('test', 'test', [rcfg_path, result['final_checkpoint'], '--work-dir', osp.join(wd, 'test')])
                else:  # no test loop (MaO stage A): a step plan may evaluate the trained weights its own way
                    for plan in STEP_PLANS:
                        if hasattr(plan, 'test_trained'):
                            plan.test_trained(rcfg, rcfg_path, wd, run, result['final_checkpoint'])
        if 'amp' not in args.skip:
            short = ['train_cfg.max_epochs=1'] if facts.get('by_epoch') else ['train_cfg.max_iters=2']
            res = step('amp', 'train', [rcfg_path, '--work-dir', osp.join(wd, 'amp'), '--amp', '--cfg-options',
                                        *short, 'train_cfg.val_interval=1000'])
            if res.ok:
                result['amp_s_per_iter'] = median_or_none(iteration_times(osp.join(wd, 'amp')))
                result['amp_cuda_memory_mb'] = max(logged(osp.join(wd, 'amp'), 'memory'), default=None)
    else:  # evaluation-only config (e.g. zero-shot): test with the config's own weights
        step('test', 'test', [rcfg_path, 'none', '--work-dir', osp.join(wd, 'test')])
    result['ok'] = bool(result['steps']) and all(s['ok'] for s in result['steps'].values())
    result['finished'] = time.strftime('%Y-%m-%d %H:%M:%S')
    with open(osp.join(wd, 'rehearsal.json'), 'w') as f:
        json.dump(result, f, indent=1, default=str)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1, default=str)
    return result


def main(argv=None):
    args = parse_args(argv)
    if args.all:
        from queryvision_mm.testing.rehearsal.report import rehearse_all
        return rehearse_all(args, REPO)
    if not args.config:
        raise SystemExit('rehearse.py: give a CONFIG or --all')
    result = rehearse(args.config, args)
    print(json.dumps({k: v for k, v in result.items() if k not in ('stage1', )}, indent=1, default=str))
    return 0 if result['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
