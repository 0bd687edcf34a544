"""QKS knowledge sharing: every label takes the query token that matches it best; and a zero-shot CLIP head."""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmpretrain.models.heads import MultiLabelClsHead
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from ...utils.text_embeddings import load_class_embeddings


class _LabelBankMixin:
    """Label embeddings (seen first, then unseen) read from a file written by tools/misc/make_category_embeddings.py;
    training scores the ``num_seen`` seen labels, evaluation all of them."""

    def _load_bank(self, embed_file: str, num_seen: int, class_names: Optional[Sequence[str]]) -> None:
        emb, names, _ = load_class_embeddings(embed_file, expected_class_names=class_names)
        if not 0 < num_seen <= emb.size(0):
            raise ValueError(f'{embed_file}: num_seen={num_seen} but the file holds {emb.size(0)} labels')
        # not persistent: checkpoints stay label-agnostic; the file (checked against the dataset) is the source
        self.register_buffer('label_embed', emb.float(), persistent=False)
        self.num_seen, self.label_names, self.embed_file = num_seen, list(names), embed_file

    def bank(self) -> Tensor:
        return self.label_embed[:self.num_seen] if self.training else self.label_embed

    def _set_pred_score_mode(self, mode: str) -> None:
        if mode not in ('raw', 'sigmoid'):
            raise ValueError(f"{type(self).__name__}: pred_score_mode must be 'raw' or 'sigmoid', got {mode!r}")
        self.pred_score_mode = mode

    def _get_predictions(self, cls_score: Tensor, data_samples: Optional[List[DataSample]]) -> List[DataSample]:
        """``pred_score``: with ``pred_score_mode='raw'`` the head's own scores (QKS logits, zero-shot
        ``logit_scale * cos``), which rank labels as the official zero-shot baseline (raw cosines, ``clip_eval.py``)
        and as the official QKS evaluation wherever its float32 sigmoid does not saturate; ``'sigmoid'`` is
        mmpretrain's ``sigmoid(score)``, which is exactly 1.0 in float32 for every score >= ~17 (cosine >= 0.17 at
        ``logit_scale`` 100; QKS logits are unbounded): all those labels tie and mAP / F1@K then follow the column
        order. ``pred_label`` keeps
        mmpretrain's meaning: the ``topk`` best labels (by the raw score: no ties), or those with
        ``sigmoid(score) >= thr``. The head's ``num_seen`` travels in the samples' metainfo so that the metric can
        check it against its own."""
        if data_samples is None:
            data_samples = [DataSample() for _ in range(cls_score.size(0))]
        probs = torch.sigmoid(cls_score)
        scores = cls_score if self.pred_score_mode == 'raw' else probs
        for sample, raw, prob, score in zip(data_samples, cls_score, probs, scores):
            label = torch.where(prob >= self.thr)[0] if self.thr is not None else raw.topk(self.topk).indices
            sample.set_pred_score(score).set_pred_label(label)
            sample.set_metainfo(dict(num_seen=self.num_seen))
        return data_samples

    def _targets(self, data_samples: List[DataSample], num_classes: int) -> Tensor:
        target = torch.zeros(len(data_samples), num_classes, device=self.label_embed.device)
        for i, s in enumerate(data_samples):
            lab = s.gt_label
            if lab.numel() and int(lab.max()) >= num_classes:
                raise ValueError(f'{s.get("img_path", f"sample {i}")}: label index {int(lab.max())} is not a seen '
                                 f'label (training scores the first {num_classes}); training annotations must hold '
                                 'seen labels only')
            target[i, lab.to(target.device)] = 1
        return target


@MODELS.register_module()
class QVQKSHead(_LabelBankMixin, MultiLabelClsHead):
    r"""QKS scoring: query tokens ``H`` (B, Nq, in_dims) -> ``Z = H P`` with a trainable projection ``P``
    (initialised from CLIP's visual projection by :class:`QVQKSClassifier`) -> per label
    :math:`s_{b,c} = \max_q \langle Z_{b,q}, t_c \rangle` with the fixed prompt-pool label embedding ``t_c``; no
    normalisation anywhere (the paper's "ranking as classification": magnitudes take part). ``reduce='topk_sum'``
    sums the best ``k`` tokens instead (the official code's commented-out alternative).

    Loss: sigmoid classification on the raw scores against the seen labels; mean over B x C (the official ASL is
    ``-1000 * sum / (B C)``, so ``QVAsymmetricLoss(gamma_neg=4, clip=0, eps=1e-5, reduction='mean',
    loss_weight=1000)`` with the focal weight detached). ``predict`` scores seen + unseen labels;
    ``pred_score_mode='raw'`` (default) returns the raw logits as ``pred_score`` (see ``_get_predictions``).
    """

    def __init__(self, embed_file: str, num_seen: int, class_names: Optional[Sequence[str]] = None,
                 in_dims: int = 768, out_dims: int = 512, reduce: str = 'max', k: int = 1,
                 loss: dict = dict(type='QVAsymmetricLoss', gamma_pos=0.0, gamma_neg=4.0, clip=0.0, eps=1e-5,
                                   reduction='mean', loss_weight=1000.0),
                 pred_score_mode: str = 'raw', init_cfg=None) -> None:
        super().__init__(loss=loss, thr=None, topk=1, init_cfg=init_cfg)
        self._set_pred_score_mode(pred_score_mode)
        if reduce not in ('max', 'topk_sum'):
            raise ValueError(f"QVQKSHead: reduce must be 'max' or 'topk_sum', got {reduce!r}")
        self._load_bank(embed_file, num_seen, class_names)
        if self.label_embed.size(1) != out_dims:
            raise ValueError(f'{embed_file}: label embeddings are {self.label_embed.size(1)}-d, out_dims={out_dims}')
        self.proj = nn.Parameter(torch.randn(in_dims, out_dims) * in_dims**-0.5)
        self.reduce, self.k = reduce, k

    def pre_logits(self, feats: Tuple[Tensor]) -> Tensor:
        return feats[-1] @ self.proj  # (B, Nq, D)

    def token_scores(self, feats: Tuple[Tensor]) -> Tensor:
        """(B, Nq, C) dot products of every query token with every label (for analysis: argmax = chosen token)."""
        return torch.einsum('bqd,cd->bqc', self.pre_logits(feats), self.bank())

    def forward(self, feats: Tuple[Tensor]) -> Tensor:
        s = self.token_scores(feats)
        if self.reduce == 'max':
            return s.max(dim=1).values
        return s.topk(min(self.k, s.size(1)), dim=1).values.sum(1)

    def _get_loss(self, cls_score: Tensor, data_samples: List[DataSample], **kwargs) -> dict:
        target = self._targets(data_samples, cls_score.size(1))
        return dict(loss=self.loss_module(cls_score, target, **kwargs))


@MODELS.register_module()
class QVCLIPZeroShotHead(_LabelBankMixin, MultiLabelClsHead):
    """Zero-shot CLIP: CLS token -> CLIP's (frozen) visual projection -> cosine similarity x ``logit_scale`` with the
    label embeddings (the QKS/MKT baseline uses the single template "There is a {} in the scene"). No parameters
    to train; use with ``train_cfg=None`` and ``tools/test.py``. ``pred_score`` = ``logit_scale * cos``
    (``pred_score_mode='raw'``): the order of the raw cosines, which the official ``clip_eval.py`` ranks."""

    def __init__(self, embed_file: str, num_seen: int, class_names: Optional[Sequence[str]] = None,
                 logit_scale: float = 100.0, pred_score_mode: str = 'raw', init_cfg=None) -> None:
        super().__init__(loss=dict(type='CrossEntropyLoss', use_sigmoid=True), thr=None, topk=1, init_cfg=init_cfg)
        self._set_pred_score_mode(pred_score_mode)
        self._load_bank(embed_file, num_seen, class_names)
        self.register_buffer('proj', torch.empty(0), persistent=False)  # set from the backbone by the classifier
        self.logit_scale = logit_scale

    def forward(self, feats: Tuple[Tensor]) -> Tensor:
        img = nn.functional.normalize(feats[-1][:, 0] @ self.proj, dim=-1)
        return self.logit_scale * img @ nn.functional.normalize(self.bank(), dim=-1).t()

    def _get_loss(self, cls_score, data_samples, **kwargs):
        raise RuntimeError('QVCLIPZeroShotHead is evaluation-only (zero-shot CLIP); run tools/test.py')
