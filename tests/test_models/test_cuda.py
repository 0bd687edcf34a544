"""CUDA paths (skipped without a GPU): compiled MSDA op vs the pure-PyTorch path, a Semi-DETR step on GPU."""
import copy

import pytest
import torch

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


@cuda
def test_msda_cuda_matches_pytorch_reference():
    from mmcv.ops.multi_scale_deform_attn import (MultiScaleDeformableAttnFunction,
                                                  multi_scale_deformable_attn_pytorch)
    torch.manual_seed(0)
    bs, heads, dims, levels, points, queries = 2, 8, 32, 4, 4, 50
    shapes = torch.tensor([[32, 32], [16, 16], [8, 8], [4, 4]], dtype=torch.long)
    start = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    value = torch.rand(bs, int((shapes[:, 0] * shapes[:, 1]).sum()), heads, dims)
    loc = torch.rand(bs, queries, heads, levels, points, 2)
    attn = torch.rand(bs, queries, heads, levels, points)
    attn = attn / attn.sum((-1, -2), keepdim=True)
    ref = multi_scale_deformable_attn_pytorch(value.double(), shapes, loc.double(), attn.double())
    out = MultiScaleDeformableAttnFunction.apply(value.cuda().double(), shapes.cuda(), start.cuda(),
                                                 loc.cuda().double(), attn.cuda().double(), 64)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-6, atol=1e-8)


@cuda
def test_semi_detr_step_on_cuda():
    from mmdet.registry import MODELS
    from test_semi_detr import confident_teacher, load, multi_branch_batch  # noqa: E402

    from conftest import shrink_semi_detr_cfg
    model = MODELS.build(shrink_semi_detr_cfg(load('coco_10pct')).model).cuda()
    model.init_weights()
    model.train()
    confident_teacher(model, 2.0)
    batch = multi_branch_batch(model)
    for stage in (True, False):
        model.set_stage(stage)
        total, _ = model.parse_losses(model.loss(batch['inputs'], copy.deepcopy(batch['data_samples'])))
        total.backward()
        assert torch.isfinite(total)
