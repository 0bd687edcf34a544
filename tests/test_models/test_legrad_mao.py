"""LeGrad maps on tiny ViTs (open_clip CLIP and HF DINOv2) against a plain re-implementation of the definition
(per-head attention written out, gradient taken w.r.t. a zero perturbation of the attention probabilities), and the
MaO descriptor optimisation (loss goes down, one vector per image in paper mode, N in code mode, weights untouched,
no-object fallback)."""
import pytest
import torch
import torch.nn.functional as F

from queryvision_mm.models.layers.legrad import LeGradDINOv2, LeGradOpenCLIP
from queryvision_mm.models.retrievers import MaORefiner, refine_or_fallback, soft_iou

open_clip = pytest.importorskip('open_clip')
TINY = dict(embed_dim=24, vision_cfg=dict(image_size=32, layers=3, width=64, patch_size=8, head_width=32),
            text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))


@pytest.fixture(scope='module')
def visual():
    torch.manual_seed(0)
    return open_clip.CLIP(**TINY).visual.eval().requires_grad_(False)


def ref_clip_raw_map(visual, images, target, layer):
    """E_l before min-max, by the definition, with per-head loops and a zero perturbation Δ on A_l."""
    x = visual._embeds(images)
    blocks = visual.transformer.resblocks
    for blk in blocks[:layer]:
        x = blk(x)
    blk = blocks[layer]
    d = x.shape[-1]
    heads = blk.attn.num_heads
    dh = d // heads
    w, b = blk.attn.in_proj_weight, blk.attn.in_proj_bias
    xn = blk.ln_1(x)
    outs, deltas = [], []
    for h in range(heads):
        sl = slice(h * dh, (h + 1) * dh)
        q = xn @ w[:d][sl].T + b[:d][sl]
        k = xn @ w[d:2 * d][sl].T + b[d:2 * d][sl]
        v = xn @ w[2 * d:][sl].T + b[2 * d:][sl]
        a = torch.softmax(q @ k.transpose(1, 2) / dh ** 0.5, dim=-1)
        delta = torch.zeros_like(a, requires_grad=True)
        deltas.append(delta)
        outs.append((a + delta) @ v)
    x = x + blk.attn.out_proj(torch.cat(outs, dim=-1))
    x = x + blk.mlp(blk.ln_2(x))
    f = F.normalize(visual.ln_post(x.mean(1)) @ visual.proj, dim=-1)
    grads = torch.autograd.grad((target * f).sum(), deltas)
    g = torch.stack(grads, dim=1)                       # [B, heads, N, N]
    e = g.clamp(min=0).mean(dim=(1, 2))[:, 1:]
    side = int(e.shape[1] ** 0.5)
    return e.reshape(-1, side, side)


def finish(raw, size):
    m = F.interpolate(raw[:, None], size=size, mode='bilinear', align_corners=False)[:, 0]
    lo = m.flatten(1).min(1).values[:, None, None]
    hi = m.flatten(1).max(1).values[:, None, None]
    return (m - lo) / (hi - lo + 1e-8)


@pytest.mark.parametrize('layers,idx', [('last', [2]), ('last2', [1, 2]), ('all', [0, 1, 2])])
def test_clip_legrad_matches_definition(visual, layers, idx):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 32, 32)
    target = F.normalize(torch.randn(2, 24), dim=-1)
    ours = LeGradOpenCLIP(visual, layers=layers)(images, target)
    ref = finish(sum(ref_clip_raw_map(visual, images, target, i) for i in idx), (32, 32))
    assert ours.shape == (2, 32, 32) and float(ours.min()) >= 0 and float(ours.max()) <= 1 + 1e-6
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_explicit_block_equals_open_clip_block(visual):
    x = visual._embeds(torch.randn(2, 3, 32, 32))
    for blk in visual.transformer.resblocks:
        ours, a = LeGradOpenCLIP.block_forward(blk, x)
        torch.testing.assert_close(ours, blk(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
        x = ours


def test_second_order_gradient_reaches_the_target(visual):
    lg = LeGradOpenCLIP(visual)
    state = lg.prepare(torch.randn(1, 3, 32, 32))
    t = F.normalize(torch.randn(1, 24), dim=-1).requires_grad_(True)
    m = lg.maps(state, t, create_graph=True)
    (g, ) = torch.autograd.grad((m * torch.rand_like(m)).sum(), t)
    assert g.abs().sum() > 0
    with pytest.raises(ValueError, match='targets'):
        lg.maps(state, torch.randn(2, 24))
    with pytest.raises(ValueError, match='outside'):
        LeGradOpenCLIP(visual, layers=[7])


def test_dinov2_legrad_matches_definition():
    transformers = pytest.importorskip('transformers')
    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    image_size=28, patch_size=14)
    torch.manual_seed(0)
    model = transformers.Dinov2Model(cfg).eval().requires_grad_(False)
    images = torch.randn(2, 3, 28, 28)
    target = F.normalize(torch.randn(2, 32), dim=-1)
    ours = LeGradDINOv2(model, layers='last')(images, target)
    # reference: the last layer written out with a zero perturbation on its attention probabilities
    x = model.embeddings(images)
    x = model.encoder.layer[0](x)[0]
    layer = model.encoder.layer[1]
    sa = layer.attention.attention
    xn = layer.norm1(x)
    b, n, d = xn.shape
    split = lambda t: t.view(b, n, 2, d // 2).transpose(1, 2)   # noqa: E731
    q, k, v = split(sa.query(xn)), split(sa.key(xn)), split(sa.value(xn))
    a = torch.softmax(q @ k.transpose(-1, -2) / (d // 2) ** 0.5, dim=-1)
    delta = torch.zeros_like(a, requires_grad=True)
    o = ((a + delta) @ v).transpose(1, 2).reshape(b, n, d)
    x = x + layer.layer_scale1(layer.attention.output.dense(o))
    x = x + layer.layer_scale2(layer.mlp(layer.norm2(x)))
    f = F.normalize(model.layernorm(x.mean(1)), dim=-1)
    (g, ) = torch.autograd.grad((target * f).sum(), delta)
    raw = g.clamp(min=0).mean(dim=(1, 2))[:, 1:].reshape(2, 2, 2)
    torch.testing.assert_close(ours, finish(raw, (28, 28)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(LeGradDINOv2(model).encode(images), model(pixel_values=images).pooler_output)


def blob_masks(n, size=32):
    masks = torch.zeros(n, size, size)
    for i in range(n):
        y, x = 4 + 7 * i % 20, 20 - 5 * i % 16
        masks[i, y:y + 10, x:x + 10] = 1
    return masks


def test_refiner_paper_mode_lowers_loss_and_keeps_weights(visual):
    torch.manual_seed(2)
    crops, masks = torch.randn(3, 3, 32, 32), blob_masks(3)
    before = {k: v.clone() for k, v in visual.state_dict().items()}
    refiner = MaORefiner(LeGradOpenCLIP(visual), iters=15)
    desc, hist = refiner.refine(crops, masks, return_history=True)
    assert desc.shape == (24, ) and abs(float(desc.norm()) - 1) < 1e-5
    assert hist[-1] < hist[0] - 1e-3, hist
    init = F.normalize(F.normalize(visual(crops), dim=-1).mean(0), dim=-1)
    assert refiner.final_loss(crops, masks, desc) < refiner.final_loss(crops, masks, init)
    assert all(torch.equal(v, before[k]) for k, v in visual.state_dict().items())
    lg = LeGradOpenCLIP(visual)
    iou = lambda d: float(soft_iou(lg(crops, d.expand(3, -1)), masks).mean())   # noqa: E731
    assert iou(desc) > iou(init), 'the optimised descriptor explains the masks better'


def test_refiner_code_mode_many_masks(visual):
    torch.manual_seed(3)
    crops, masks = torch.randn(4, 3, 32, 32), blob_masks(4)
    out, hist = MaORefiner(LeGradOpenCLIP(visual), iters=10, mode='code').refine(crops, masks, return_history=True)
    assert out.shape == (4, 24) and hist[-1] < hist[0]
    merged = MaORefiner(LeGradOpenCLIP(visual), iters=2, mode='code', merge='mean').refine(crops, masks)
    assert merged.shape == (24, )
    with pytest.raises(ValueError, match='mode'):
        MaORefiner(None, mode='x')


def test_no_object_falls_back_to_whole_image(visual):
    image = torch.randn(3, 32, 32)
    refiner = MaORefiner(LeGradOpenCLIP(visual), iters=2)
    out = refine_or_fallback(refiner, torch.zeros(0, 3, 32, 32), torch.zeros(0, 32, 32), image)
    torch.testing.assert_close(out, F.normalize(visual(image[None]), dim=-1)[0])
    with pytest.raises(ValueError, match='N >= 1'):
        refiner.refine(torch.zeros(0, 3, 32, 32), torch.zeros(0, 32, 32))
