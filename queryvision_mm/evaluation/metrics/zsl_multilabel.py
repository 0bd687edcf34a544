"""Zero-shot / generalised zero-shot multi-label metrics with the QKS protocol (NUS-WIDE, Open Images)."""
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger

from mmpretrain.registry import METRICS

from .zsl_consistency_hook import QVZSLConsistencyHook, zsl_consistency_errors  # noqa: F401  (registers the hook)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per column: non-interpolated AP over the entries with target +1/-1 (0 = unknown, ignored), ranked by score
    (descending; equal scores keep their row order). A column without a positive gets AP 0 (QKS/MKT protocol)."""
    aps = np.zeros(scores.shape[1])
    for c in range(scores.shape[1]):
        known = targets[:, c] != 0
        s, t = scores[known, c], targets[known, c]
        pos = t == 1
        if not pos.any():
            continue
        order = np.argsort(-s, kind='stable')
        hits = pos[order]
        precision_at_hit = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
        aps[c] = precision_at_hit.mean()
    return aps


def topk_prf(scores: np.ndarray, targets: np.ndarray, k: int):
    """Micro precision, recall, F1 of the k highest-scoring labels per image (ties: lower column index first)."""
    n, c = scores.shape
    k = min(k, c)
    top = np.argsort(-scores, axis=1, kind='stable')[:, :k]
    tp = float((np.take_along_axis(targets, top, axis=1) == 1).sum())
    npos = float((targets == 1).sum())
    p = tp / (n * k) if n else 0.0
    r = tp / npos if npos else 0.0
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


@METRICS.register_module()
class QVZSLMultiLabelMetric(BaseMetric):
    """mAP and top-K P/R/F1 on seen, unseen (ZSL) and all (GZSL) labels, exactly as the QKS evaluation:

    scores over C = C_seen + C_unseen labels (seen first); targets +1 (positive), -1 (negative), 0 (unknown). For
    each split (``seen`` = first ``num_seen`` columns, ``zsl`` = the rest, ``gzsl`` = all):

    1. keep images with at least one positive in the split's columns, then the columns with at least one non-zero
       target among those images;
    2. mAP = mean over the kept columns of the non-interpolated AP over their known (+-1) entries; a kept column with
       no positive counts as AP 0;
    3. P/R/F1@k: the k best-scoring kept columns per kept image; P = TP / (N k), R = TP / #positives, micro F1.

    Targets come from the samples: ``gt_label`` (positive indices over all labels) and, with
    ``negatives='explicit'`` (Open Images), ``gt_negative`` (annotated negatives; the rest is unknown), or
    ``negatives='complement'`` (NUS-WIDE: every non-positive is a negative). Also reports ``<split>/score`` = mAP +
    sum of F1@k (the official model-selection score).

    Only the order of ``pred_score`` matters: the QKS heads give raw logits / cosines (never a float32 sigmoid,
    which saturates to tied 1.0 values). Consistency is checked on first use: ``num_seen`` against the dataset's
    metainfo (the annotation file) and the head's (carried in the samples), the number of scored labels against
    the dataset's classes, ``negatives`` against the file's.

    Args:
        num_seen (int): Number of seen labels (first columns).
        topk (Sequence[int]): K values (NUS-WIDE 3, 5; Open Images 10, 20).
        splits (Sequence[str]): Any of ``seen``, ``zsl``, ``gzsl``.
        negatives (str): ``complement`` or ``explicit``.
    """
    default_prefix: Optional[str] = None

    def __init__(self, num_seen: int, topk: Sequence[int] = (3, 5), splits: Sequence[str] = ('zsl', 'gzsl'),
                 negatives: str = 'complement', collect_device: str = 'cpu', prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        bad = set(splits) - {'seen', 'zsl', 'gzsl'}
        if bad:
            raise ValueError(f'QVZSLMultiLabelMetric: unknown splits {sorted(bad)}')
        if negatives not in ('complement', 'explicit'):
            raise ValueError(f"QVZSLMultiLabelMetric: negatives must be 'complement' or 'explicit', got {negatives!r}")
        self.num_seen, self.topk, self.splits, self.negatives = int(num_seen), tuple(topk), tuple(splits), negatives

    def _check_dataset_meta(self) -> None:
        """Fail loudly when the dataset's metainfo (``QVZSLMultiLabelDataset``: the annotation file) disagrees with
        this metric's ``num_seen`` / ``negatives`` (e.g. a converter that merged labels shifts the boundary)."""
        meta = self.dataset_meta or {}
        where = meta.get('ann_file', 'the dataset')
        if 'num_seen' in meta and int(meta['num_seen']) != self.num_seen:
            raise ValueError(f'val_evaluator / test_evaluator: num_seen={self.num_seen} but {where} has '
                             f'metainfo.num_seen={meta["num_seen"]} (set the config field num_seen to it)')
        if 'negatives' in meta and meta['negatives'] != self.negatives:
            raise ValueError(f'val_evaluator / test_evaluator: negatives={self.negatives!r} but {where} has '
                             f'metainfo.negatives={meta["negatives"]!r}')

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        if not self.results:
            self._check_dataset_meta()
        for s in data_samples:
            if 'num_seen' in s and int(s['num_seen']) != self.num_seen:
                raise ValueError(f'model.head.num_seen={int(s["num_seen"])} but the evaluator\'s num_seen='
                                 f'{self.num_seen} (val_evaluator / test_evaluator)')
            score = torch.as_tensor(s['pred_score']).float().cpu().numpy()
            c = score.shape[0]
            classes = (self.dataset_meta or {}).get('classes')
            if classes is not None and len(classes) != c:
                raise ValueError(f"the model scores {c} labels but {self.dataset_meta.get('ann_file', 'the dataset')}"
                                 f' has {len(classes)} classes (model.head.embed_file vs the annotation file)')
            target = np.full(c, -1 if self.negatives == 'complement' else 0, dtype=np.int8)
            if self.negatives == 'explicit':
                if 'gt_negative' not in s:
                    raise KeyError(f"{s.get('img_path')}: negatives='explicit' needs gt_negative in the samples "
                                   "(PackInputs(algorithm_keys=['gt_negative']))")
                target[np.asarray(torch.as_tensor(s['gt_negative']).cpu(), dtype=np.int64)] = -1
            pos = np.asarray(torch.as_tensor(s['gt_label']).cpu(), dtype=np.int64)
            if pos.size and pos.max() >= c:
                raise ValueError(f"{s.get('img_path')}: label {pos.max()} but the model scores {c} labels")
            target[pos] = 1
            self.results.append((score, target))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        if not results:
            raise ValueError('QVZSLMultiLabelMetric: no samples were processed (empty dataset?)')
        scores = np.stack([r[0] for r in results])
        targets = np.stack([r[1] for r in results])
        if self.num_seen > scores.shape[1] or ('zsl' in self.splits and self.num_seen == scores.shape[1]):
            raise ValueError(f'QVZSLMultiLabelMetric: num_seen={self.num_seen} but the model scores '
                             f'{scores.shape[1]} labels (ZSL needs unseen columns)')
        cols = dict(seen=slice(0, self.num_seen), zsl=slice(self.num_seen, None), gzsl=slice(None))
        out, logger = {}, MMLogger.get_current_instance()
        for split in self.splits:
            s, t = scores[:, cols[split]], targets[:, cols[split]]
            rows = (t == 1).any(1)
            s, t = s[rows], t[rows]
            keep = (t != 0).any(0)
            s, t = s[:, keep], t[:, keep]
            out[f'{split}/mAP'] = 100 * float(average_precision(s, t).mean()) if keep.any() else 0.0
            total = out[f'{split}/mAP']
            for k in self.topk:
                p, r, f = topk_prf(s, t, k)
                out.update({f'{split}/P@{k}': 100 * p, f'{split}/R@{k}': 100 * r, f'{split}/F1@{k}': 100 * f})
                total += 100 * f
            out[f'{split}/score'] = total
            out[f'{split}/num_images'] = int(rows.sum())
            out[f'{split}/num_labels'] = int(keep.sum())
            logger.info(f'{split}: {int(rows.sum())} images, {int(keep.sum())} labels, mAP {out[f"{split}/mAP"]:.2f}')
        return out
