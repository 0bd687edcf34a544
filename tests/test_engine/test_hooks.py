from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MessageHub, MMLogger
from torch import nn

from queryvision_mm.engine.hooks import QVMeanTeacherHook, QVStageSwitchHook


class TeacherStudent(nn.Module):

    def __init__(self):
        super().__init__()
        self.student = nn.Linear(3, 2)
        self.teacher = nn.Linear(3, 2)
        self.register_buffer('one_to_many_stage', torch.ones((), dtype=torch.bool))

    @property
    def one_to_many(self):
        return bool(self.one_to_many_stage)

    def set_stage(self, one_to_many):
        self.one_to_many_stage.fill_(one_to_many)


def fake_runner(model, it=0):
    return SimpleNamespace(model=model, iter=it, message_hub=MessageHub.get_instance('qv-test-hooks'),
                           logger=MMLogger.get_instance('qv-test-hooks'))


def test_ema_ramp_arithmetic():
    hook = QVMeanTeacherHook(momentum=0.001, ramp=True, warm_up=0)
    # official: teacher rate m = min(0.999, 1 - (1 + w) / (iter + 1 + w)) before iteration iter
    for i in range(0, 3000, 97):
        official_m = min(0.999, 1 - 1 / (i + 2))
        assert hook.student_weight(i) == pytest.approx(1 - official_m, abs=1e-12)
    assert hook.student_weight(0) == 0.5 and hook.student_weight(10 ** 6) == 0.001
    assert QVMeanTeacherHook(momentum=0.001, ramp=False).student_weight(0) == 0.001
    assert QVMeanTeacherHook(momentum=0.001, warm_up=100).student_weight(0) == pytest.approx(101 / 102)


def test_ema_updates_teacher_exactly():
    torch.manual_seed(0)
    model = TeacherStudent()
    hook = QVMeanTeacherHook(momentum=0.01, ramp=True)
    runner = fake_runner(model)
    hook.before_train(runner)  # copies student -> teacher at iteration 0
    assert torch.equal(model.teacher.weight, model.student.weight)
    expected = model.teacher.weight.detach().clone()
    for it in range(5):
        with torch.no_grad():
            model.student.weight.add_(torch.randn_like(model.student.weight))
        runner.iter = it
        hook.after_train_iter(runner, it)
        m = max(0.01, 1 / (it + 2))
        expected = (1 - m) * expected + m * model.student.weight.detach()
        torch.testing.assert_close(model.teacher.weight, expected)


def test_stage_switch_by_iteration_and_resume():
    model = TeacherStudent()
    hook = QVStageSwitchHook(switch_iter=100)
    runner = fake_runner(model, it=0)
    hook.before_train(runner)
    assert model.one_to_many
    for it, expected in ((99, True), (100, False), (150, False)):
        runner.iter = it
        hook.before_train_iter(runner, it)
        assert model.one_to_many is expected
    # resuming at iteration 120 goes straight to one-to-one, resuming at 50 back to one-to-many
    resumed = TeacherStudent()
    hook.before_train(fake_runner(resumed, it=120))
    assert resumed.one_to_many is False
    hook.before_train(fake_runner(resumed, it=50))
    assert resumed.one_to_many is True


def test_stage_switch_rejects_models_without_stage():
    with pytest.raises(TypeError, match='set_stage'):
        QVStageSwitchHook(10).before_train(fake_runner(nn.Linear(1, 1)))
