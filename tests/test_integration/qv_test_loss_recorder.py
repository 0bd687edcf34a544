"""Test-only hook (imported through custom_imports by the distributed test): writes each rank's loss."""
import json
import os.path as osp

from mmengine.dist import get_rank
from mmengine.hooks import Hook

from mmdet.registry import HOOKS


@HOOKS.register_module()
class QVTestLossRecorderHook(Hook):

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        with open(osp.join(self.out_dir, f'losses_rank{get_rank()}.jsonl'), 'a') as f:
            f.write(json.dumps(dict(iter=runner.iter, loss=float(outputs['loss']))) + '\n')
