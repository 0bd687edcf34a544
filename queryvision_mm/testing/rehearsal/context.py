"""What the rehearsal's data writers and weight providers share: the sandbox, sizes, a seeded RNG, and the tables
that map a dataset type / a config to the function that writes its files."""
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

# dataset type (as in the config, e.g. 'CocoDataset') -> fn(ds_cfg, ctx) writing that dataset's files
DATA_WRITERS: Dict[str, Callable] = {}
# fn(cfg, ctx) -> None, each writing the pretrained files / side files it recognises in a config
WEIGHT_PROVIDERS: List[Callable] = []
# fn(cfg, rcfg_path, wd, run) -> bool, for configs that are not (only) train/test configs: ``run(name, argv)`` runs a
# step (argv: a full command, cwd = sandbox) and returns a StepResult; return True when the function ran every step
# of the config (the default train/resume/test/amp steps are then skipped), False to run them after its own steps
STEP_PLANS: List[Callable] = []


def data_writer(*types: str):
    """Register a writer for one or more dataset types."""

    def wrap(fn):
        for t in types:
            if t in DATA_WRITERS:
                raise KeyError(f'a rehearsal data writer for {t!r} exists already')
            DATA_WRITERS[t] = fn
        return fn

    return wrap


def step_plan(fn):
    STEP_PLANS.append(fn)
    return fn


def weight_provider(fn):
    WEIGHT_PROVIDERS.append(fn)
    return fn


@dataclass
class WeightRecord:
    """One file the rehearsal stood in for: which component reads it, how (``pretrained`` through the model's own
    loader, ``load_from``, ``side file`` such as embeddings), and what it was replaced by."""
    component: str
    kind: str
    original: str
    written: str
    note: str = ''


@dataclass
class RehearsalContext:
    root: str  # sandbox: the tools run with this as working directory, so the config's relative paths land here
    torch_home: str  # TORCH_HOME of the runs: URLs resolve to <torch_home>/hub/checkpoints/<basename>
    num_images: int = 4
    img_scale: int = 128
    seed: int = 0
    weights: List[WeightRecord] = field(default_factory=list)
    written: Dict[str, str] = field(default_factory=dict)  # path -> what wrote it (each file once)
    rng: Optional[np.random.Generator] = None
    extra: Dict = field(default_factory=dict)  # facts read from the config, e.g. num_classes

    def __post_init__(self):
        if self.rng is None:
            self.rng = np.random.default_rng(self.seed)

    def path(self, p: str) -> str:
        """A config path (relative to the working directory, or absolute) as a path inside the sandbox."""
        if osp.isabs(p):
            raise ValueError(f'rehearsal: absolute data path {p!r} in the config; the rehearsal only writes inside '
                             f'its sandbox ({self.root}), so give the config relative paths')
        return osp.join(self.root, p)

    def claim(self, p: str, by: str) -> bool:
        """True the first time a file is claimed (writers skip files another split already wrote)."""
        if p in self.written:
            return False
        self.written[p] = by
        os.makedirs(osp.dirname(p) or '.', exist_ok=True)
        return True

    def hub_checkpoint_path(self, url: str) -> str:
        """Where torch.hub / mmengine's ``load_url`` looks for ``url`` before downloading."""
        return osp.join(self.torch_home, 'hub', 'checkpoints', osp.basename(url.split('?')[0]))
