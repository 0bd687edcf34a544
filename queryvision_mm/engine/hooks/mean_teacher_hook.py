"""EMA teacher hook with the warm-up ramp of the official Semi-DETR code."""
from typing import Optional

from mmengine.model import is_model_wrapper

from mmdet.engine.hooks import MeanTeacherHook
from mmdet.registry import HOOKS


@HOOKS.register_module()
class QVMeanTeacherHook(MeanTeacherHook):
    r"""Mean-teacher EMA with an optional warm-up ramp.

    mmdet convention: ``momentum`` is the **student** weight, teacher <- (1 - m) * teacher + m * student
    (0.001 == EMA rate 0.999). With ``ramp=True`` the student weight after iteration ``i`` (0-based)
    is ``max(momentum, (1 + warm_up) / (i + 2 + warm_up))``, which is the official hook's
    ``1 - min(0.999, 1 - (1 + warm_up) / (iter + 1 + warm_up))`` evaluated before iteration ``i + 1``:
    the teacher follows the student closely at first and reaches the target rate after
    ~``1 / momentum`` iterations. The ramp depends only on ``runner.iter``, and the teacher weights
    live in the model's state dict, so a resumed run continues exactly.

    Args:
        momentum (float): Final student weight. Defaults to 0.001 (EMA 0.999).
        interval (int): Update interval in iterations. Defaults to 1.
        skip_buffer (bool): Average parameters only (official). Defaults to True.
        ramp (bool): Use the warm-up ramp. Defaults to True.
        warm_up (int): Offset of the ramp (official configs: 0). Defaults to 0.
    """

    def __init__(self, momentum: float = 0.001, interval: int = 1, skip_buffer: bool = True, ramp: bool = True,
                 warm_up: int = 0) -> None:
        super().__init__(momentum=momentum, interval=interval, skip_buffer=skip_buffer)
        self.ramp = ramp
        self.warm_up = warm_up

    def student_weight(self, cur_iter: int) -> float:
        """Student weight applied after iteration ``cur_iter`` (0-based)."""
        if not self.ramp:
            return self.momentum
        return max(self.momentum, (1.0 + self.warm_up) / (cur_iter + 2.0 + self.warm_up))

    def after_train_iter(self, runner, batch_idx: int, data_batch: Optional[dict] = None,
                         outputs: Optional[dict] = None) -> None:
        if (runner.iter + 1) % self.interval != 0:
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        m = self.student_weight(runner.iter)
        self.momentum_update(model, m)
        runner.message_hub.update_scalar('train/ema_student_weight', m)
