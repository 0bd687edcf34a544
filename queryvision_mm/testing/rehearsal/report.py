"""``rehearse.py --all``: every shipped config in its own process (stage-1 configs through the stage-2 configs that
load them), then ``docs/rehearsal.md`` with one row per config."""
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import tempfile
import time

from mmengine.config import Config

from .provenance import summarise


def shipped_configs(repo: str, include=None, exclude=()):
    out = []
    for path in sorted(glob.glob(osp.join(repo, 'configs', '**', '*.py'), recursive=True)):
        rel = osp.relpath(path, repo)
        if '/_base_/' in rel or any(e in rel for e in exclude):
            continue
        if include and not any(i in rel for i in include):
            continue
        out.append(rel)
    return out


def _stage1_of(repo: str, rel: str):
    from .plan import producer_of
    s1 = producer_of(Config.fromfile(osp.join(repo, rel)).get('load_from'), osp.join(repo, rel))
    return osp.relpath(s1, repo) if s1 else None


def _git_commit(repo: str) -> str:
    try:
        return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def _mb(x):
    return f'{x / 1024:.1f} GiB' if x and x >= 1024 else (f'{x:.0f} MiB' if x else '—')


def _mark(steps, name):
    s = steps.get(name)
    return '—' if s is None else ('✓' if s['ok'] else '✗')


STANDARD_STEPS = ('train', 'resume', 'test', 'amp')


def _other_steps(steps: dict) -> str:
    other = [f'{k} {"✓" if s["ok"] else "✗"}' for k, s in steps.items() if k not in STANDARD_STEPS]
    return f' ({", ".join(other)})' if other else ''


def _overrides(r: dict) -> str:
    """The ``--cfg-options`` a rehearsal ran with (a config not rehearsed exactly as shipped says so)."""
    opts = r.get('cfg_options')
    if not opts:
        return ''
    return ' — with ' + ', '.join(f'`{k}={v}`' for k, v in opts.items())


def row(r: dict) -> str:
    steps = r.get('steps', {})
    params = r.get('params') or {}
    unused = r.get('unused_params')
    if unused is None:
        ddp = '—'
    else:
        flag = 'on' if unused['find_unused_parameters'] else 'off'
        n = len(unused['unused'])
        why = (f'{n} trainable params without grad at iter 1 (e.g. `{unused["unused"][0]}`)' if n else
               'every trainable param gets a grad')
        ddp = f'find_unused {flag}: {why}'
        later = r.get('unused_params_resumed')
        if later is not None and later['unused'] != unused['unused']:
            m = len(later['unused'])
            ddp += (f'; after the resume point (iter {later["iteration"] + 1}): '
                    + (f'{m} without grad (e.g. `{later["unused"][0]}`)' if m else 'all get a grad'))
    peak = max((s.get('peak_rss_mb', 0) for s in steps.values()), default=0)
    cells = [
        f'`{r["config"]}`', '✓' if 'sources' in r or steps else '✗',
        _mark(steps, 'train'), ddp, _mark(steps, 'resume'), _mark(steps, 'test'), _mark(steps, 'amp'),
        f'{params.get("total", 0) / 1e6:.1f}M / {params.get("trainable", 0) / 1e6:.1f}M' if params else '—',
        (f'{r["s_per_iter"]:.1f}' if r.get('s_per_iter') else '—') + f' ({r.get("img_scale", "?")} px)',
        _mb(peak) + ('' if r.get('memory') == 'pss' else ' (RSS sum)'),
        summarise(r['sources']) if r.get('sources') else '—',
        ('ok' if r.get('ok') else ('FAILED: ' + r.get('error', next((k for k, s in steps.items() if not s['ok']),
                                                                     'setup'))))
        + _other_steps(steps) + _overrides(r),
    ]
    return '| ' + ' | '.join(cells) + ' |'


HEADER = ('| config | builds | trains (N) | DDP | resume | test | AMP | params total / trainable | s/iter (short side) | '
          'peak memory (all processes) | where the weights come from | result |\n'
          '|---|---|---|---|---|---|---|---|---|---|---|---|')


def rehearse_all(args, repo: str) -> int:
    configs = shipped_configs(repo, args.include, args.exclude)
    stage1_of = {c: _stage1_of(repo, c) for c in configs}
    covered = {s for s in stage1_of.values() if s}
    results = []
    tmp = tempfile.mkdtemp(prefix='qv-rehearse-')
    for rel in configs:
        if rel in covered:
            continue  # rehearsed as the first stage of the config that loads it
        out = osp.join(tmp, rel.replace('/', '_') + '.json')
        cmd = [sys.executable, osp.join(repo, 'tools', 'misc', 'rehearse.py'), rel, '--gpus', str(args.gpus),
               '--iters', str(args.iters), '--img-scale', str(args.img_scale), '--json', out,
               '--timeout', str(args.timeout), '--workers', str(args.workers)] + (['--skip', *args.skip] if args.skip else [])
        start = time.time()
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
        if osp.isfile(out):
            with open(out) as f:
                r = json.load(f)
        else:
            r = dict(config=rel, ok=False, steps={}, error=(proc.stderr or proc.stdout).strip().splitlines()[-1:])
            r['error'] = ' '.join(r['error'])[:300]
        r['wall_s'] = round(time.time() - start)
        if r.get('stage1'):
            results.append(r['stage1'])
        results.append(r)
        print(f'[rehearse --all] {rel}: {"ok" if r.get("ok") else "FAILED"} ({r["wall_s"]} s)', flush=True)
        how = (f'`python tools/misc/rehearse.py --all --gpus {args.gpus} --iters {args.iters} --img-scale '
               f'{args.img_scale}`')
        _write(args.report, repo, how, results)
    return 0 if all(r.get('ok') for r in results) else 1


def collect(run_dir: str):
    """Every ``rehearsal.json`` under ``run_dir`` (single-config runs, their stage-1 runs included); a config
    rehearsed more than once (alone and as another config's stage 1) keeps its latest run."""
    latest = {}
    for path in sorted(glob.glob(osp.join(run_dir, '**', 'rehearsal.json'), recursive=True)):
        with open(path) as f:
            r = json.load(f)
        key = r.get('config', path)
        if key not in latest or r.get('started', '') >= latest[key].get('started', ''):
            latest[key] = r
    return sorted(latest.values(), key=lambda r: r.get('config', ''))


def _write(path: str, repo: str, how: str, results, missing=()) -> None:
    commits = sorted({r.get('commit', '') for r in results} - {''})
    lines = [
        '# Rehearsal: shipped configs at their real architecture',
        '',
        f'Written {time.strftime("%Y-%m-%d")} from {how} on {os.cpu_count()} CPU cores (gloo), '
        f'commit(s) {", ".join(f"`{c}`" for c in commits) or f"`{_git_commit(repo)}`"}. '
        'What each column means: see the end of this page.',
        '',
        HEADER,
    ] + [row(r) for r in results] + ['']
    if missing:
        lines += ['Not rehearsed in this run (see the note below the table): ' + ', '.join(f'`{m}`' for m in missing),
                  '']
    lines += [LEGEND]
    os.makedirs(osp.dirname(path), exist_ok=True)
    old = open(path).read() if osp.isfile(path) else ''
    kept = [old[old.index(b):old.index(e) + len(e)] for b, e in ((NOTES_BEGIN, NOTES_END), (GPU_BEGIN, GPU_END))
            if b in old and e in old]  # hand-written notes and the GPU check survive a new table
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n' + ''.join('\n' + k + '\n' for k in kept))


LEGEND = """## Columns
- **trains (N)**: `tools/dist_train.sh` with N processes, across the O2M→O2O switch (iteration configs: switch one
  iteration before the middle checkpoint) or 2 epochs, validation with the config's own evaluators, checkpoints.
- **DDP**: the config's `find_unused_parameters` and the fact behind it: trainable parameters that received no
  gradient in the first iteration (`QVUnusedParamProbeHook`). Any such parameter with the flag off stops DDP.
- **resume**: `--resume` from the middle checkpoint in a new work dir, finishing the run (mmengine logs
  "resumed epoch").
- **test**: `tools/dist_test.sh` on the final checkpoint with the config's test evaluators.
- **AMP**: a short `--amp` run (`QVAmpOptimWrapper`: bf16 autocast on CPU, fp16 + dynamic loss scale on GPU).
- **params**: elements, whole model (Semi-DETR: teacher + student).
- **s/iter**: median of the logged iteration times at the rehearsal scale (not the real scale).
- **peak memory**: the largest sum over a step's whole process tree (launcher, ranks, data workers), sampled every
  0.5 s: PSS (shared pages split between the processes that map them, i.e. the physical use). Rows marked
  "RSS sum" were measured before the tool used PSS: pages shared between processes count once per process there, an
  upper bound that can exceed the machine (64 GB read for a Swin-L step on 23.5 GB).
- **where the weights come from**: each component's parameters, from three builds and initialisations of the model
  with its own code (seeds 1 and 3 as configured, seed 2 with every stand-in weight file perturbed): `pretrained` =
  follows the file (an init_cfg URL, a local weight file, an embedding file), `load_from` = present in the load_from
  checkpoint, `random` = differs between seeds; fixed initialisations (LayerNorm ones, zero biases, MSDA offset
  grids) are not counted.
  A pretrained part training from scratch shows up as `random`; `[frozen]` marks components without trainable
  parameters (the teacher, stage 1's detector parts).
"""


GPU_BEGIN, GPU_END = '<!-- gpu-check:begin -->', '<!-- gpu-check:end -->'
NOTES_BEGIN, NOTES_END = '<!-- notes:begin -->', '<!-- notes:end -->'


def gpu_section(out_dir: str) -> str:
    """The "GPU check" section from ``tools/gpu_check.sh``'s outputs (MSDA comparison + rehearsals at real scale)."""
    lines = [GPU_BEGIN, '## GPU check (`bash tools/gpu_check.sh`)', '']
    msda_path = osp.join(out_dir, 'msda.json')
    device = 'unknown GPU'
    if osp.isfile(msda_path):
        with open(msda_path) as f:
            msda = json.load(f)
        device = msda['device']
        lines.append(f'{time.strftime("%Y-%m-%d")} on {device}. MSDA CUDA vs PyTorch (forward + 3 gradients), '
                     f'worst relative error per case (tolerance {msda["tol"]:g} for float32): ' + ', '.join(
                         f'{k}: {max(v["rel"] for v in r.values()):.1e}' for k, r in msda['results'].items()))
    else:
        lines.append('MSDA comparison: no result (see the gpu_check log).')
    lines += ['', '| config | train (real scale) | s/iter fp32 | peak GPU mem fp32 | AMP | s/iter AMP | '
              'peak GPU mem AMP |', '|---|---|---|---|---|---|---|']
    for path in sorted(glob.glob(osp.join(out_dir, '*.json'))):
        if path.endswith('msda.json'):
            continue
        with open(path) as f:
            r = json.load(f)
        st = r.get('steps', {})

        def fmt(x, unit=''):
            return f'{x:.2f}{unit}' if isinstance(x, (int, float)) else '—'

        lines.append(f'| `{r["config"]}` | {_mark(st, "train")} | {fmt(r.get("s_per_iter"))} | '
                     f'{fmt(r.get("cuda_memory_mb"), " MB")} | {_mark(st, "amp")} | {fmt(r.get("amp_s_per_iter"))} | '
                     f'{fmt(r.get("amp_cuda_memory_mb"), " MB")} |')
    return '\n'.join(lines + ['', GPU_END])


def replace_gpu_section(md_path: str, section: str) -> None:
    text = open(md_path).read() if osp.isfile(md_path) else '# Rehearsal\n'
    if GPU_BEGIN in text and GPU_END in text:
        text = text[:text.index(GPU_BEGIN)] + section + text[text.index(GPU_END) + len(GPU_END):]
    else:
        text = text.rstrip('\n') + '\n\n' + section + '\n'
    with open(md_path, 'w') as f:
        f.write(text)


if __name__ == '__main__':
    import argparse
    p = argparse.ArgumentParser(description='write docs/rehearsal.md from rehearsal results')
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument('--gpu-section', nargs=2, metavar=('OUT_DIR', 'MARKDOWN'), help='tools/gpu_check.sh results')
    g.add_argument('--collect', nargs=2, metavar=('RUN_DIR', 'MARKDOWN'),
                   help='the CPU table from single-config runs (work_dirs/rehearsal)')
    a = p.parse_args()
    if a.gpu_section:
        replace_gpu_section(a.gpu_section[1], gpu_section(a.gpu_section[0]))
    else:
        repo = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
        results = collect(a.collect[0])
        done = {r['config'] for r in results}
        missing = [c for c in shipped_configs(repo) if c not in done]
        _write(a.collect[1], repo, 'single-config runs of `tools/misc/rehearse.py CONFIG --gpus 2`', results,
               missing)
