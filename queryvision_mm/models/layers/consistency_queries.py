"""Cross-view consistency queries of Semi-DETR: RoI-feature projector and the decoder attention mask."""
from typing import Optional

import torch
from torch import Tensor, nn

from mmdet.registry import MODELS


@MODELS.register_module()
class QVConsistencyProjector(nn.Module):
    """Turns RoI-aligned features into one content query per box (Semi-DETR ``Projector``).

    Conv3x3(no bias)-BN-ReLU -> Conv3x3(no bias)-BN-ReLU -> flatten -> Linear-BN1d-ReLU -> Linear-ReLU.

    Args:
        in_channels (int): Channels of the RoI features. Defaults to 256.
        roi_size (int): Spatial size of the RoI features. Defaults to 7.
        hidden_dims (int): Width of the first linear layer. Defaults to 1024.
        out_dims (int): Query dimension. Defaults to 256.
    """

    def __init__(self, in_channels: int = 256, roi_size: int = 7, hidden_dims: int = 1024, out_dims: int = 256) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False), nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False), nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True))
        self.mlp = nn.Sequential(
            nn.Linear(in_channels * roi_size * roi_size, hidden_dims), nn.BatchNorm1d(hidden_dims),
            nn.ReLU(inplace=True), nn.Linear(hidden_dims, out_dims), nn.ReLU(inplace=True))

    def forward(self, roi_feats: Tensor) -> Tensor:
        """(N, C, S, S) -> (N, out_dims). BatchNorm needs N >= 2 in training: a single RoI is duplicated,
        which leaves the batch statistics unchanged."""
        n = roi_feats.size(0)
        if n == 1 and self.training:
            return self.mlp(self.convs(roi_feats.expand(2, -1, -1, -1)).flatten(1))[:1]
        return self.mlp(self.convs(roi_feats).flatten(1))


def build_extra_query_attn_mask(num_groups: int,
                                group_size: int,
                                num_matching: int,
                                dn_mask: Optional[Tensor] = None,
                                device=None) -> Tensor:
    """Self-attention mask for a decoder input ``[extra groups | denoising | matching]``.

    ``True`` means *blocked* (mmdet/PyTorch boolean ``attn_mask`` convention). Rules (Semi-DETR):

    * each extra (consistency / refined) group sees only itself and the matching queries;
    * denoising queries keep their own mask (``dn_mask``) and cannot see any extra group;
    * matching queries see neither extra nor denoising queries, so they are computed exactly as
      without the extra queries.

    Args:
        num_groups (int): Number of extra groups.
        group_size (int): Queries per extra group.
        num_matching (int): Number of matching queries.
        dn_mask (Tensor, optional): ``(P2 + num_matching)^2`` mask of mmdet's
            :class:`CdnQueryGenerator`, or None when no denoising queries are used.

    Returns:
        Tensor: Boolean mask of shape ``(T, T)``, ``T = num_groups * group_size + P2 + num_matching``.
    """
    p1 = num_groups * group_size
    if dn_mask is not None:
        device = dn_mask.device
        p2 = dn_mask.size(0) - num_matching
        assert p2 >= 0 and dn_mask.size(0) == dn_mask.size(1), 'dn_mask does not match num_matching'
    else:
        p2 = 0
    total = p1 + p2 + num_matching
    mask = torch.zeros((total, total), dtype=torch.bool, device=device)
    if p1 > 0:
        group_id = torch.arange(p1, device=device) // group_size
        mask[:p1, :p1] = group_id[:, None] != group_id[None, :]
        mask[:p1, p1:p1 + p2] = True  # extra rows never see denoising columns
        mask[p1:, :p1] = True  # denoising and matching rows never see extra columns
    if dn_mask is not None:
        mask[p1:, p1:] = dn_mask
    mask[p1 + p2:, :p1 + p2] = True
    return mask
