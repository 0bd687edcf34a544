import pytest
import torch

from mmdet.models.layers import CdnQueryGenerator
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData
from queryvision_mm.models.layers import QVConsistencyProjector, build_extra_query_attn_mask


def reference_mask(groups, size, num_matching, dn_mask):
    p1 = groups * size
    p2 = 0 if dn_mask is None else dn_mask.size(0) - num_matching
    total = p1 + p2 + num_matching
    m = torch.zeros(total, total, dtype=torch.bool)
    for r in range(total):
        for c in range(total):
            if r < p1:  # extra row
                m[r, c] = (c < p1 and c // size != r // size) or (p1 <= c < p1 + p2)
            elif c < p1:
                m[r, c] = True
            else:
                if dn_mask is not None:
                    m[r, c] = dn_mask[r - p1, c - p1]
                if r >= p1 + p2 and c < p1 + p2:
                    m[r, c] = True
    return m


def make_dn_mask(num_matching=12, gts=(2, 1)):
    gen = CdnQueryGenerator(num_classes=3, embed_dims=8, num_matching_queries=num_matching,
                            group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=6))
    samples = []
    for n in gts:
        s = DetDataSample(metainfo=dict(img_shape=(64, 64)))
        s.gt_instances = InstanceData(bboxes=torch.tensor([[4., 4., 30., 30.]]).repeat(n, 1),
                                      labels=torch.zeros(n, dtype=torch.long))
        samples.append(s)
    return gen(samples)[2]


@pytest.mark.parametrize('groups,size', [(0, 1), (1, 1), (5, 1), (5, 3), (2, 4)])
@pytest.mark.parametrize('with_dn', [False, True])
def test_mask_matches_reference(groups, size, with_dn):
    dn_mask = make_dn_mask() if with_dn else None
    mask = build_extra_query_attn_mask(groups, size, 12, dn_mask=dn_mask)
    ref = reference_mask(groups, size, 12, dn_mask)
    assert mask.shape == ref.shape
    assert torch.equal(mask, ref)


def test_blocking_semantics():
    dn_mask = make_dn_mask()
    p2 = dn_mask.size(0) - 12
    mask = build_extra_query_attn_mask(5, 2, 12, dn_mask=dn_mask)
    p1 = 10
    # consistency group 1 sees only itself and the matching queries
    row = mask[2]
    assert not row[2:4].any() and row[0:2].all() and row[4:p1].all()
    assert row[p1:p1 + p2].all(), 'consistency queries must not see denoising queries'
    assert not row[p1 + p2:].any()
    # denoising and matching rows never see consistency queries
    assert mask[p1:, :p1].all()
    # matching queries see no denoising query either
    assert mask[p1 + p2:, p1:p1 + p2].all()
    assert not mask[p1 + p2:, p1 + p2:].any()


def test_projector_shapes_and_single_roi():
    proj = QVConsistencyProjector(in_channels=16, roi_size=7, hidden_dims=32, out_dims=8).train()
    assert proj(torch.randn(5, 16, 7, 7)).shape == (5, 8)
    out1 = proj(torch.randn(1, 16, 7, 7))  # BatchNorm1d would fail on a single sample
    assert out1.shape == (1, 8) and torch.isfinite(out1).all()
