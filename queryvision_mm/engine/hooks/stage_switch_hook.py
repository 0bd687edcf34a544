"""One-to-many -> one-to-one stage switch of Semi-DETR."""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmdet.registry import HOOKS


@HOOKS.register_module()
class QVStageSwitchHook(Hook):
    """Sets the detector's matching stage from the iteration: one-to-many while
    ``runner.iter < switch_iter``, one-to-one afterwards.

    Because the stage is a function of the iteration (and stored in the model's
    ``one_to_many_stage`` buffer), a run resumed on either side of the switch lands in the right
    stage, and checkpoints tell ``tools/test.py`` whether to use NMS.

    Args:
        switch_iter (int): First iteration of the one-to-one stage (Semi-DETR: 60k of 120k).
    """

    priority = 'NORMAL'

    def __init__(self, switch_iter: int) -> None:
        assert switch_iter >= 0, f'switch_iter must be >= 0, got {switch_iter}'
        self.switch_iter = int(switch_iter)

    @staticmethod
    def _model(runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if not hasattr(model, 'set_stage'):
            raise TypeError(f'QVStageSwitchHook needs a model with set_stage(); got {type(model).__name__}')
        return model

    def _apply(self, runner) -> None:
        model = self._model(runner)
        one_to_many = runner.iter < self.switch_iter
        if model.one_to_many != one_to_many:
            runner.logger.info(f'QVStageSwitchHook: iteration {runner.iter}: switching to '
                               f'{"one-to-many" if one_to_many else "one-to-one"} matching')
        model.set_stage(one_to_many)

    def before_train(self, runner) -> None:
        self._apply(runner)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._apply(runner)
        runner.message_hub.update_scalar('train/one_to_many', float(runner.iter < self.switch_iter))
