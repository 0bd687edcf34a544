"""``QVUnusedParamProbeHook``: records, for the first training iteration of a run, which trainable parameters received
no gradient (``register_post_accumulate_grad_hook``), and writes ``unused_params.json`` into the work dir (rank 0).
This is the fact behind DDP's ``find_unused_parameters``: with any such parameter and the flag off, DDP stops at the
second iteration ("Expected to have finished reduction in the prior iteration")."""
import json
import os.path as osp

from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class QVUnusedParamProbeHook(Hook):
    priority = 'VERY_LOW'

    def __init__(self) -> None:
        self._seen, self._handles, self._names, self._done = set(), [], [], False

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        for name, p in model.named_parameters():
            if p.requires_grad:
                self._names.append(name)
                self._handles.append(p.register_post_accumulate_grad_hook(lambda _p, n=name: self._seen.add(n)))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self._done:
            return
        self._done = True
        for h in self._handles:
            h.remove()
        unused = [n for n in self._names if n not in self._seen]
        wrapper = runner.cfg.get('model_wrapper_cfg') or {}
        if get_rank() == 0:
            with open(osp.join(runner.work_dir, 'unused_params.json'), 'w') as f:
                json.dump(dict(iteration=runner.iter, trainable=len(self._names), unused=unused,
                               find_unused_parameters=bool(wrapper.get('find_unused_parameters', False))), f)
