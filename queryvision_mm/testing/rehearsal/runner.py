"""Runs the real tools for a rehearsal (``tools/dist_train.sh`` / ``dist_test.sh`` with N processes, or
``train.py`` / ``test.py`` for one) in the sandbox, with offline flags and TORCH_HOME pointing at the stand-in
checkpoints, and measures wall time and the peak resident memory of the whole process tree."""
import glob
import json
import os
import os.path as osp
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import List, Optional

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


@dataclass
class StepResult:
    name: str
    rc: int
    seconds: float
    peak_rss_mb: float
    log: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _pss(p):
    try:
        return getattr(p.memory_full_info(), 'pss', None)
    except (AttributeError, NotImplementedError, OSError):
        return None


def process_memory(p) -> int:
    """Bytes of one process: its PSS on Linux (shared pages split between the processes that map them, so a sum
    over processes is the physical use), its RSS elsewhere. RSS counts the libraries and shared tensors of every
    rank again: the sum over a 2-rank Swin-L step read 64 GB on a 23.5 GB machine without swap."""
    pss = _pss(p)
    return int(pss) if pss is not None else int(p.memory_info().rss)


def memory_kind() -> str:
    """What :func:`process_memory` measures here: 'pss' (Linux) or 'rss'."""
    import psutil
    return 'pss' if _pss(psutil.Process()) is not None else 'rss'


def _tree_rss(proc) -> float:
    import psutil
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += process_memory(p)
        except psutil.Error:
            pass
    return total / 2**20


def tool_command(tool: str, nproc: int, args: List[str]) -> List[str]:
    """``tool`` is 'train' or 'test'. N > 1 goes through the shipped launchers (torchrun)."""
    if nproc > 1:
        script = osp.join(REPO, 'tools', f'dist_{tool}.sh')
        if tool == 'train':
            return ['bash', script, args[0], str(nproc)] + args[1:]
        return ['bash', script, args[0], args[1], str(nproc)] + args[2:]
    return [sys.executable, osp.join(REPO, 'tools', f'{tool}.py')] + args


def run_step(name: str, cmd: List[str], cwd: str, env: dict, log_path: str, timeout: float) -> StepResult:
    import psutil
    full_env = dict(os.environ)
    full_env.update(env)
    full_env['PYTHON'] = sys.executable
    full_env['PORT'] = str(free_port())
    full_env['PYTHONPATH'] = REPO + (os.pathsep + full_env['PYTHONPATH'] if full_env.get('PYTHONPATH') else '')
    peak = [0.0]
    start = time.time()
    with open(log_path, 'w') as log:
        log.write('$ ' + ' '.join(cmd) + '\n')
        log.flush()
        popen = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        ps = psutil.Process(popen.pid)
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], _tree_rss(ps))
                stop.wait(0.5)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            rc = popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, 9)
            rc = popen.wait()
            log.write(f'\n[rehearsal] {name}: killed after {timeout:.0f} s\n')
            rc = rc or 124
        finally:
            stop.set()
            t.join()
    return StepResult(name, rc, time.time() - start, peak[0], log_path)


def logged(work_dir: str, key: str) -> List[float]:
    """``key`` of every logged training iteration (mmengine's vis_data/scalars.json): 'time' (s/iter) or
    'memory' (peak CUDA memory in MB, logged on GPU only)."""
    values = []
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                if key in rec and 'loss' in rec:
                    values.append(float(rec[key]))
    return values


def iteration_times(work_dir: str) -> List[float]:
    """Logged iteration times, the first one (start-up) dropped."""
    times = logged(work_dir, 'time')
    return times[1:] if len(times) > 1 else times


def median_or_none(xs) -> Optional[float]:
    return statistics.median(xs) if xs else None


def tail(path: str, n: int = 40) -> str:
    with open(path, errors='replace') as f:
        return ''.join(f.readlines()[-n:])
