"""Saves the peft LoRA adapter of a model that has ``save_adapter`` (MaO stage A) next to the checkpoints."""
import os.path as osp

from mmengine.hooks import Hook

from mmpretrain.registry import HOOKS


@HOOKS.register_module()
class QVSaveLoRAAdapterHook(Hook):
    """After every ``interval`` epochs and at the end of training: ``WORK_DIR/<dirname>`` (adapter_config.json +
    adapter_model.safetensors), loadable with ``lora_adapter=`` by the MaO crop encoders."""
    priority = 'LOW'

    def __init__(self, dirname: str = 'lora_adapter', interval: int = 1) -> None:
        self.dirname, self.interval = dirname, int(interval)

    def _save(self, runner) -> None:
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        if not hasattr(model, 'save_adapter'):
            raise TypeError(f'QVSaveLoRAAdapterHook: {type(model).__name__} has no save_adapter()')
        if runner.rank == 0:
            path = model.save_adapter(osp.join(runner.work_dir, self.dirname))
            runner.logger.info(f'LoRA adapter saved to {path}')

    def after_train_epoch(self, runner) -> None:
        if self.every_n_epochs(runner, self.interval):
            self._save(runner)

    def after_train(self, runner) -> None:
        self._save(runner)
