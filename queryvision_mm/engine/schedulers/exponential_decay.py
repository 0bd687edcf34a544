"""``QVExponentialDecayLR``: exponential learning-rate decay from the optimizer's rate to ``eta_end`` over exactly the
scheduled steps (MaO stage A: "AdamW, lr 5e-5 decayed exponentially to 1e-6", arXiv 2503.07038 Sec. 4 / authors'
README).

mmengine's ``ExponentialLR`` takes a fixed ``gamma``; the right one depends on the number of iterations, which is
known only when the dataloader exists (dataset size / (batch x GPUs)). Here gamma is derived per parameter group:

    gamma = (eta_end / lr_0) ** (1 / (end - begin - 1))   so that   lr(begin) = lr_0,  lr(end - 1) = eta_end.

With ``by_epoch=True, convert_to_iter_based=True`` the Runner passes the real ``epoch_length`` and ``begin``/``end``
(in epochs) become iterations, so ``end=max_epochs`` decays over every iteration of training, the last one at
``eta_end``.
"""
from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
from mmengine.optim.scheduler.param_scheduler import INF, ExponentialParamScheduler
from mmengine.registry import PARAM_SCHEDULERS


# mmengine's root registry (configs of every scope find it)
@PARAM_SCHEDULERS.register_module()
class QVExponentialDecayLR(LRSchedulerMixin, ExponentialParamScheduler):
    """Exponential decay reaching ``eta_end`` at the last scheduled step (``end - 1``).

    Args:
        optimizer: optimizer or optim wrapper.
        eta_end (float): learning rate at the last step.
        begin, end (int): scheduled steps [begin, end); ``end`` must be finite.
        by_epoch (bool): as mmengine's schedulers; with ``convert_to_iter_based=True`` the decay is per iteration.
    """

    def __init__(self, optimizer, eta_end: float, begin: int = 0, end: int = INF, last_step: int = -1,
                 by_epoch: bool = True, verbose: bool = False) -> None:
        if end == INF or end <= begin:
            raise ValueError(f'QVExponentialDecayLR needs a finite schedule (end > begin), got begin={begin} '
                             f'end={end}')
        if eta_end <= 0:
            raise ValueError(f'QVExponentialDecayLR: eta_end must be > 0, got {eta_end}')
        self.eta_end = float(eta_end)
        groups = optimizer.param_groups
        starts = [g.get('initial_lr', g['lr']) for g in groups]
        # a one-step schedule stays at the starting rate
        self.gammas = [(self.eta_end / lr0) ** (1.0 / (end - begin - 1)) if end - begin > 1 else 1.0
                       for lr0 in starts]
        super().__init__(optimizer, gamma=self.gammas[0], begin=begin, end=end,
                         last_step=last_step, by_epoch=by_epoch, verbose=verbose)

    @classmethod
    def build_iter_from_epoch(cls, *args, begin=0, end=INF, by_epoch=True, epoch_length=None, **kwargs):
        """Epochs -> iterations (gamma is derived from the converted range, not converted itself)."""
        if not by_epoch or not epoch_length or epoch_length <= 0:
            raise ValueError(f'QVExponentialDecayLR: convert_to_iter_based needs by_epoch=True and a positive '
                             f'epoch_length, got by_epoch={by_epoch} epoch_length={epoch_length}')
        return cls(*args, begin=int(begin * epoch_length), end=int(end * epoch_length) if end != INF else INF,
                   by_epoch=False, **kwargs)

    def _get_value(self):
        groups = self.optimizer.param_groups
        if self.last_step == 0:     # the first scheduled step (``begin``): the rate as it is
            return [g['lr'] for g in groups]
        return [g['lr'] * gamma for g, gamma in zip(groups, self.gammas)]
