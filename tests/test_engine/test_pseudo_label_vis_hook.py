"""QVPseudoLabelVisHook: teacher pseudo-labels beside student predictions, logged to the runner's visualizer
(any vis backend; TensorBoard event files written in a short training)."""
import glob
import os.path as osp
import random
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate

from mmdet.registry import DATASETS, HOOKS, MODELS

from conftest import DEMO_CONFIG, REPO, shrink_semi_detr_cfg

TB_CONFIG = osp.join(REPO, 'configs', 'semi_detr', 'demo_shapes_tensorboard.py')


class RecordingVisualizer:

    def __init__(self):
        self.images = []

    def add_image(self, name, image, step=0):
        self.images.append((name, image, step))


def unlabeled_batch(cfg, n=3):
    """A collated batch of unlabeled images through the config's own MultiBranch pipeline (weak + strong views)."""
    ds = DATASETS.build(cfg.train_dataloader.dataset.datasets[-1])
    return pseudo_collate([ds[i] for i in range(n)]), ds.metainfo


@pytest.fixture
def setup(tiny_demo_data):
    torch.manual_seed(0)
    cfg = shrink_semi_detr_cfg(Config.fromfile(DEMO_CONFIG), data_root=tiny_demo_data)
    model = MODELS.build(cfg.model)
    model.init_weights()  # DINO's level_embed etc. are torch.empty until init_weights
    model.train()
    model.teacher.eval()  # as during training: teacher_pseudo_labels() leaves the teacher in eval mode
    for branch in model.teacher.bbox_head.cls_branches:  # some candidates >= the 0.4 pseudo-label threshold
        branch.bias.data.fill_(0.0)
    batch, metainfo = unlabeled_batch(cfg)
    runner = SimpleNamespace(model=model, iter=0, visualizer=RecordingVisualizer(),
                             train_dataloader=SimpleNamespace(dataset=SimpleNamespace(metainfo=metainfo)))
    return model, batch, runner


def test_hook_logs_pairs_every_interval_and_leaves_training_untouched(setup):
    model, batch, runner = setup
    hook = HOOKS.build(dict(type='QVPseudoLabelVisHook', interval=2, max_images=2, min_size=0,
                            visualizer=dict(name=f'vis-{uuid.uuid4().hex}')))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {name: m.training for name, m in model.named_modules()}
    rng = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()

    runner.iter = 0  # iteration 1: not a multiple of 2
    hook.after_train_iter(runner, 0, batch)
    assert runner.visualizer.images == []
    runner.iter = 1  # iteration 2
    hook.after_train_iter(runner, 1, batch)
    (name, image, step), = runner.visualizer.images
    assert name == 'pseudo_labels' and step == 2
    weak = batch['inputs']['unsup_teacher']
    # max_images rows of (candidates | predictions) pairs, each under a title strip
    assert image.dtype == np.uint8 and image.shape[1] == 2 * max(w.shape[2] for w in weak[:2])
    assert image.shape[0] > weak[0].shape[1] + weak[1].shape[1]
    vis = hook._visualizer
    assert type(vis).__name__ == 'QVPseudoLabelVisualizer' and vis.pseudo_thr == 0.4
    assert vis.dataset_meta['classes'] == ('circle', 'square', 'triangle')

    # the training step is unchanged: same weights and buffers, train/eval flags and random stream
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert torch.equal(torch.get_rng_state(), rng[0]) and (np.random.get_state()[1] == rng[1]).all()
    assert random.getstate() == rng[2]
    assert 'gt_instances' not in batch['data_samples']['unsup_teacher'][0] or \
        len(batch['data_samples']['unsup_teacher'][0].gt_instances) == 0, 'the batch is not modified'


def test_hook_draws_what_the_teacher_and_student_predict(setup, monkeypatch):
    """The pictures hold the teacher's teacher_pseudo_labels() candidates and the student's predictions on the
    weak view of the same images (first max_images of the batch)."""
    from queryvision_mm.visualization import QVPseudoLabelVisualizer
    model, batch, runner = setup
    seen = []
    original = QVPseudoLabelVisualizer.add_datasample

    def spy(self, name, image, data_sample=None, **kw):
        seen.append((image.shape, data_sample))
        return original(self, name, image, data_sample, **kw)

    monkeypatch.setattr(QVPseudoLabelVisualizer, 'add_datasample', spy)
    hook = HOOKS.build(dict(type='QVPseudoLabelVisHook', interval=1, max_images=2, min_size=0))
    hook.after_train_iter(runner, 0, batch)
    assert len(seen) == 2
    data = model.data_preprocessor(dict(inputs=batch['inputs']['unsup_teacher'][:2],
                                        data_samples=batch['data_samples']['unsup_teacher'][:2]), False)
    model.eval()
    expected = model.teacher_pseudo_labels(data['inputs'], data['data_samples'])
    for (shape, drawn), raw, exp in zip(seen, batch['inputs']['unsup_teacher'], expected):
        assert shape[:2] == tuple(raw.shape[1:])
        torch.testing.assert_close(drawn.gt_instances.bboxes, exp.bboxes.cpu())
        torch.testing.assert_close(drawn.gt_instances.scores, exp.scores.cpu())
        assert 'pred_instances' in drawn and len(drawn.pred_instances) > 0


def test_hook_ignores_batches_without_the_branch(setup):
    model, batch, runner = setup
    hook = HOOKS.build(dict(type='QVPseudoLabelVisHook', interval=1))
    hook.after_train_iter(runner, 0, dict(inputs=[torch.zeros(3, 8, 8)], data_samples=[None]))
    hook.after_train_iter(runner, 0, dict(inputs=dict(sup=[torch.zeros(3, 8, 8)]), data_samples=dict(sup=[None])))
    assert runner.visualizer.images == []
    with pytest.raises(ValueError, match='interval'):
        HOOKS.build(dict(type='QVPseudoLabelVisHook', interval=0))


def test_tensorboard_example_config_writes_pseudo_label_images_and_scalars(tiny_demo_data, tmp_path):
    """configs/semi_detr/demo_shapes_tensorboard.py (shrunk, 2 iterations, hook every iteration): TensorBoard
    event files with the pseudo-label picture at steps 1 and 2 and the training scalars."""
    from mmengine.runner import Runner
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as e:  # not a skip: CI must run this test
        pytest.fail(f'{e}: the `tensorboard` package comes with requirements/tests.txt (tools/setup_env.sh)')
    cfg = shrink_semi_detr_cfg(Config.fromfile(TB_CONFIG), data_root=tiny_demo_data, max_iters=2, switch_iter=1)
    assert {b['type'] for b in cfg.visualizer.vis_backends} == {'LocalVisBackend', 'TensorboardVisBackend'}
    hooks = [h for h in cfg.custom_hooks if h['type'] == 'QVPseudoLabelVisHook']
    assert len(hooks) == 1
    hooks[0].update(interval=1, max_images=1, min_size=0)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.test_cfg = cfg.test_dataloader = cfg.test_evaluator = None
    cfg.train_cfg.val_interval = 10
    cfg.visualizer.name = f'tb-{uuid.uuid4().hex}'
    cfg.work_dir = str(tmp_path)
    runner = Runner.from_cfg(cfg)
    runner.train()
    runner.visualizer.close()
    events = glob.glob(osp.join(str(tmp_path), '*', 'vis_data', 'events.out.tfevents.*'))
    assert events, 'TensorboardVisBackend wrote no event file'
    acc = EventAccumulator(osp.dirname(events[0]), size_guidance={'images': 0, 'scalars': 0})
    acc.Reload()
    tags = acc.Tags()
    assert 'pseudo_labels' in tags['images']
    pictures = acc.Images('pseudo_labels')
    assert [p.step for p in pictures] == [1, 2]
    assert pictures[0].width > 0 and pictures[0].height > 0 and pictures[0].encoded_image_string[:4] == b'\x89PNG'
    assert {'loss', 'lr', 'unsup_num_pseudo'} <= set(tags['scalars'])
    assert [s.step for s in acc.Scalars('loss')] == [1, 2]
    # the LocalVisBackend got the same picture as a PNG
    assert glob.glob(osp.join(str(tmp_path), '*', 'vis_data', 'vis_image', 'pseudo_labels_*.png'))


@pytest.mark.parametrize('config,enabled', [('semi_detr/demo_shapes.py', True),
                                            ('sparse_semi_detr/demo_shapes.py', True),
                                            ('semi_detr/coco_10pct.py', False),
                                            ('sparse_semi_detr/coco_10pct.py', False)])
def test_hook_is_on_in_the_demos_only(config, enabled):
    cfg = Config.fromfile(osp.join(REPO, 'configs', config))
    hooks = [h for h in cfg.custom_hooks if h['type'] == 'QVPseudoLabelVisHook']
    assert bool(hooks) == enabled
    if enabled:
        assert hooks[0]['interval'] == 50 and hooks[0]['max_images'] == 2
