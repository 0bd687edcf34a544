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
        self.num_seen, self.label_names = num_seen, list(names)

    def bank(self) -> Tensor:
        return self.label_embed[:self.num_seen] if self.training else self.label_embed

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
    loss_weight=1000)`` with the focal weight detached). ``predict`` scores seen + unseen labels.
    """

    def __init__(self, embed_file: str, num_seen: int, class_names: Optional[Sequence[str]] = None,
                 in_dims: int = 768, out_dims: int = 512, reduce: str = 'max', k: int = 1,
                 loss: dict = dict(type='QVAsymmetricLoss', gamma_pos=0.0, gamma_neg=4.0, clip=0.0, eps=1e-5,
                                   reduction='mean', loss_weight=1000.0),
                 init_cfg=None) -> None:
        super().__init__(loss=loss, thr=None, topk=1, init_cfg=init_cfg)
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
    to train; use with ``train_cfg=None`` and ``tools/test.py``."""

    def __init__(self, embed_file: str, num_seen: int, class_names: Optional[Sequence[str]] = None,
                 logit_scale: float = 100.0, init_cfg=None) -> None:
        super().__init__(loss=dict(type='CrossEntropyLoss', use_sigmoid=True), thr=None, topk=1, init_cfg=init_cfg)
        self._load_bank(embed_file, num_seen, class_names)
        self.register_buffer('proj', torch.empty(0), persistent=False)  # set from the backbone by the classifier
        self.logit_scale = logit_scale

    def forward(self, feats: Tuple[Tensor]) -> Tensor:
        img = nn.functional.normalize(feats[-1][:, 0] @ self.proj, dim=-1)
        return self.logit_scale * img @ nn.functional.normalize(self.bank(), dim=-1).t()

    def _get_loss(self, cls_score, data_samples, **kwargs):
        raise RuntimeError('QVCLIPZeroShotHead is evaluation-only (zero-shot CLIP); run tools/test.py')
