"""Training-time pictures of the teacher's pseudo-labels beside the student's predictions (any vis backend)."""
import os.path as osp
from typing import Optional, Sequence

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmdet.registry import HOOKS
from ...visualization.pseudo_label_visualizer import stack_rows
from ...visualization.pseudo_labels import (build_pseudo_label_visualizer, draw_pairs, teacher_student_predictions,
                                            to_rgb)


@HOOKS.register_module()
class QVPseudoLabelVisHook(Hook):
    """Every ``interval`` training iterations, draw the teacher's pseudo-label candidates (left; solid when they
    enter the loss, score >= ``cls_pseudo_thr``, dashed below) beside the student's predictions (right) on the
    first ``max_images`` unlabeled weak-view images of the current batch, and log the picture with
    ``runner.visualizer.add_image(f'{prefix}', image, step=iteration)`` -- so the config's vis backends
    (Local, TensorBoard, WandB, ...) receive it.

    The teacher and student are run again (eval mode, no gradients, every module's train flag restored) on the
    batch's ``unsup_teacher`` inputs, in the network-input frame, after the iteration's update: the training
    step itself is unchanged. Runs on the main process only.

    Enable it with ``custom_hooks.append(dict(type='QVPseudoLabelVisHook', interval=500))``.

    Args:
        interval (int): Draw every ``interval`` iterations. Defaults to 500.
        max_images (int): Images per picture (stacked vertically). Defaults to 2.
        branch (str): Batch branch with the images the teacher sees. Defaults to ``'unsup_teacher'``.
        pred_score_thr (float): Student score threshold. Defaults to 0.3.
        min_size (int): Small images are enlarged to this short side. Defaults to 320.
        prefix (str): Image name in the backends. Defaults to ``'pseudo_labels'``.
        visualizer (dict, optional): Extra :class:`QVPseudoLabelVisualizer` arguments (``line_width``, ...).
    """

    priority = 'LOW'

    def __init__(self, interval: int = 500, max_images: int = 2, branch: str = 'unsup_teacher',
                 pred_score_thr: float = 0.3, min_size: int = 320, prefix: str = 'pseudo_labels',
                 visualizer: Optional[dict] = None) -> None:
        if int(interval) < 1 or int(max_images) < 1:
            raise ValueError(f'QVPseudoLabelVisHook: interval and max_images must be >= 1, '
                             f'got interval={interval}, max_images={max_images}')
        self.interval = int(interval)
        self.max_images = int(max_images)
        self.branch = branch
        self.pred_score_thr = float(pred_score_thr)
        self.min_size = int(min_size)
        self.prefix = prefix
        self.visualizer_cfg = dict(visualizer or {})
        self._visualizer = None

    def _get_visualizer(self, runner, model):
        if self._visualizer is None:
            cfg = dict(pseudo_thr=model.semi_train_cfg.cls_pseudo_thr) if hasattr(model, 'semi_train_cfg') \
                and 'cls_pseudo_thr' in model.semi_train_cfg else {}
            cfg.update(self.visualizer_cfg)
            self._visualizer = build_pseudo_label_visualizer(cfg)
            dataset = getattr(getattr(runner, 'train_dataloader', None), 'dataset', None)
            self._visualizer.dataset_meta = dict(getattr(dataset, 'metainfo', None) or {})
        return self._visualizer

    def _images(self, data_batch) -> Optional[tuple]:
        if not isinstance(data_batch, dict) or not isinstance(data_batch.get('inputs'), dict):
            return None  # not a multi-branch (semi-supervised) batch
        inputs = data_batch['inputs'].get(self.branch)
        samples = data_batch.get('data_samples', {}).get(self.branch)
        if inputs is None or samples is None:
            return None
        pairs = [(i, s) for i, s in zip(inputs, samples) if i is not None and s is not None][:self.max_images]
        if not pairs:
            return None
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def after_train_iter(self, runner, batch_idx: int, data_batch: Optional[dict] = None,
                         outputs: Optional[dict] = None) -> None:
        if not self.every_n_train_iters(runner, self.interval) or not is_main_process():
            return
        found = self._images(data_batch)
        if found is None:
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        inputs, samples = found
        candidates, preds = teacher_student_predictions(model, inputs, samples)
        vis = self._get_visualizer(runner, model)
        rows = draw_pairs(vis, [to_rgb(i) for i in inputs], candidates, preds, self.pred_score_thr, self.min_size)
        image = stack_rows(rows, self._titles(samples), vis)
        runner.visualizer.add_image(self.prefix, image, step=runner.iter + 1)

    @staticmethod
    def _titles(samples: Sequence) -> list:
        return [osp.basename(str(s.metainfo.get('img_path', f'image {i}'))) for i, s in enumerate(samples)]
