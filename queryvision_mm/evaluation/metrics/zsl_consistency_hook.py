"""QKS label-set consistency (no paper equation: guards the seen/unseen split of QKS section "Experiments", NUS-WIDE
925/81 and Open Images 7,186/400): the head's label bank (``embed_file``, ``num_seen``), the dataset's annotation
file (``metainfo.classes`` / ``num_seen`` / ``negatives``) and the evaluator's ``num_seen`` / ``negatives`` must
agree, else training scores the wrong columns as seen (e.g. after the Open Images converter merged MIDs sharing a
name) and evaluation splits ZSL / GZSL at the wrong column. Registered from ``zsl_multilabel.py`` (imported with the
metric)."""
from typing import Iterable, List

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmpretrain.registry import HOOKS


def zsl_consistency_errors(model, dataset, metrics: Iterable, where: str) -> List[str]:
    """Every disagreement between ``model.head``, ``dataset`` (its metainfo) and the ZSL ``metrics``, as messages
    naming the config field and the annotation file; empty when the dataset is not a ZSL dataset."""
    meta = dataset.metainfo if dataset is not None else {}
    if 'num_seen' not in meta or 'classes' not in meta:
        return []
    ann = meta.get('ann_file') or f'{where}.dataset'
    classes, n_seen = list(meta['classes']), int(meta['num_seen'])
    errors = []
    model = model.module if is_model_wrapper(model) else model
    head = getattr(model, 'head', None)
    if head is not None and hasattr(head, 'num_seen') and hasattr(head, 'label_names'):
        if int(head.num_seen) != n_seen:
            errors.append(f'model.head.num_seen={head.num_seen} but {ann} has metainfo.num_seen={n_seen}')
        names = list(head.label_names)
        if names != classes:
            i = next((k for k, (a, b) in enumerate(zip(names, classes)) if a != b), min(len(names), len(classes)))
            a = repr(names[i]) if i < len(names) else '(none)'
            b = repr(classes[i]) if i < len(classes) else '(none)'
            errors.append(f'model.head.embed_file={getattr(head, "embed_file", "?")} holds {len(names)} labels, '
                          f'{ann} has {len(classes)} classes; first difference at index {i}: {a} vs {b}')
    evaluator = where.replace('dataloader', 'evaluator')
    for metric in metrics or []:
        if not (hasattr(metric, 'num_seen') and hasattr(metric, 'negatives') and hasattr(metric, 'splits')):
            continue
        if int(metric.num_seen) != n_seen:
            errors.append(f'{evaluator}.num_seen={metric.num_seen} but {ann} has metainfo.num_seen={n_seen}')
        if 'negatives' in meta and metric.negatives != meta['negatives']:
            errors.append(f'{evaluator}.negatives={metric.negatives!r} but {ann} has '
                          f'metainfo.negatives={meta["negatives"]!r}')
    return errors


@HOOKS.register_module()
class QVZSLConsistencyHook(Hook):
    """Checks :func:`zsl_consistency_errors` before training (training and validation data), validation and testing,
    and raises one ``ValueError`` listing every mismatch. The QKS configs add it to ``custom_hooks``."""
    priority = 'VERY_HIGH'

    @staticmethod
    def _check(runner, loop, where: str) -> None:
        if loop is None or isinstance(loop, dict):
            return
        evaluator = getattr(loop, 'evaluator', None)
        errors = zsl_consistency_errors(runner.model, loop.dataloader.dataset,
                                        getattr(evaluator, 'metrics', []), where)
        if errors:
            raise ValueError('QKS label sets disagree (fix the config or regenerate the files):\n  - ' +
                             '\n  - '.join(errors))

    def before_train(self, runner) -> None:
        self._check(runner, runner.train_loop, 'train_dataloader')
        self._check(runner, runner.val_loop, 'val_dataloader')

    def before_val(self, runner) -> None:
        self._check(runner, runner.val_loop, 'val_dataloader')

    def before_test(self, runner) -> None:
        self._check(runner, runner.test_loop, 'test_dataloader')
