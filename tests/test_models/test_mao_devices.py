"""MaO devices, batching, autocast and resizing (issue 14, item 1), on tiny random models of the real classes.

* ``device`` resolution: clear errors for CUDA on a machine without it, for unknown devices and GPU indices;
* every module and every model input follows the describer's device: checked with PyTorch's ``meta`` device as a
  second device on a CPU-only machine (parameters and buffers moved, each model called with inputs on ``meta``),
  and on a real GPU when there is one (same descriptors as on the CPU);
* the images of a batch and the crops of an image go through each model together, with the same results as one at a
  time (OWLv2, SAM, the encoder, stage B across images);
* ``amp``: autocast reaches the encoder; stage B stays fp32;
* antialiased resizing matches PIL's bicubic resize of a real photo.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from test_mao_pipeline import SAM_ARCH, image, models  # noqa: F401  (module fixture)

DEFAULT_SCOPE = 'mmpretrain'


def build(models, device='cpu', refine=dict(iters=3), **kw):  # noqa: F811
    from mmpretrain.registry import MODELS
    root, clip = models
    return MODELS.build(dict(
        type='QVMaODescriber', encoder=dict(type='QVOpenCLIPCropEncoder', model_name=clip),
        proposals=dict(type='QVOWLv2Objectness', model_dir=str(root / 'owlv2'), max_objects=3),
        masks=dict(type='QVSAMBoxMasks', checkpoint=str(root / 'sam.pth'), model_type='custom', arch=SAM_ARCH),
        refine=refine, device=device, **kw))


def test_device_resolution(monkeypatch, models):  # noqa: F811
    from queryvision_mm.models.retrievers.mao_components import resolve_device
    assert resolve_device('cpu') == torch.device('cpu') and resolve_device(None) == torch.device('cpu')
    with pytest.raises(ValueError, match=r"QVMaODescriber.device='gpu' is not a device"):
        build(models, device='gpu')
    with pytest.raises(ValueError, match="amp='fp8'"):
        build(models, amp='fp8')
    if not torch.cuda.is_available():
        assert resolve_device('auto') == torch.device('cpu')
        # the old describer had no device at all (moving the encoder by hand crashed); now CUDA is asked for
        # explicitly and its absence is an error, never a silent CPU run
        with pytest.raises(RuntimeError, match=r"QVMaODescriber.device='cuda' but CUDA is not available"):
            build(models, device='cuda')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 1)    # e.g. rank 1 after init_dist
    assert resolve_device('auto') == torch.device('cuda', 1) and resolve_device('cuda') == torch.device('cuda', 1)
    assert resolve_device('CUDA:0') == torch.device('cuda', 0)
    with pytest.raises(RuntimeError, match=r"'cuda:2' but only 2 CUDA device\(s\)"):
        resolve_device('cuda:2')


def test_every_module_and_model_input_follows_the_device(models):  # noqa: F811
    """``meta`` stands in for a second device: after ``describer.to('meta')`` every parameter and buffer is there,
    and OWLv2, SAM (image encoder, prompt encoder, mask decoder), the encoder and LeGrad / stage B are called with
    inputs on it (the old code built its inputs on the CPU: resize_batch, the OWLv2 pixels, the SAM masks)."""
    d = build(models, device='cpu')
    tensors = list(d.parameters()) + list(d.buffers())
    assert len(tensors) > 50 and all(t.device.type == 'cpu' for t in tensors)
    d.to('meta')
    assert d.device.type == 'meta'
    assert all(t.device.type == 'meta' for t in list(d.parameters()) + list(d.buffers()))
    assert all(t.device.type == 'meta' for t in d.refiner.explainer.parameters()), 'LeGrad uses the same modules'
    calls = []

    def hook(module, args, kwargs):
        ts = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
        if ts:
            calls.append((type(module).__name__, {t.device.type for t in ts}))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in d.modules()]
    img = image(5)
    try:
        emb = d.encoder.embed([img, image(6, 30, 30)])
        crops = d.encoder.preprocess([img, img, img])
        masks = torch.ones(3, 32, 32, device='meta')
        out = d.refiner.refine_batch(crops, masks, [1, 2])
        # OWLv2 and SAM run their models on meta; only their data-dependent post-processing (NMS, copying the
        # masks back to the CPU) cannot run without data
        with pytest.raises(NotImplementedError):
            d.proposals.forward_batch([img, image(7)])
        with pytest.raises(NotImplementedError):
            d.masks.forward_batch([img], [torch.tensor([[2., 3., 30., 40.]])])
    finally:
        for h in handles:
            h.remove()
    assert emb.device.type == 'meta' and [o.device.type for o in out] == ['meta', 'meta']
    called = {name for name, _ in calls}
    assert {'VisionTransformer', 'Owlv2VisionTransformer', 'ImageEncoderViT', 'PromptEncoder',
            'MaskDecoder'} <= called, called
    wrong = [(n, devs) for n, devs in calls if devs != {'meta'}]
    assert not wrong, f'model inputs not on the model device: {wrong[:5]}'


def test_batched_pipeline_equals_one_image_at_a_time(models):  # noqa: F811
    d = build(models, device='cpu')
    imgs = [image(10), image(11, 60, 40), image(12, 36, 90)]
    one = [d.describe_gallery(im) for im in imgs]
    many = d.describe_gallery_batch(imgs)
    assert all(not o['fallback'] for o in one) and sum(len(o['boxes']) for o in one) > 3
    for a, b in zip(one, many):
        assert torch.equal(a['boxes'], b['boxes']) and torch.equal(a['masks'], b['masks'])
        assert a['masks'].device.type == 'cpu' and isinstance(b['descriptor'], np.ndarray)
        np.testing.assert_allclose(b['descriptor'], a['descriptor'], atol=2e-5)
    # SAM: the batched image-encoder path equals segment-anything's own predictor, image by image
    boxes = [o['boxes'] for o in one]
    for m, im, b in zip(d.masks.forward_batch(imgs, boxes), imgs, boxes):
        assert torch.equal(m, d.masks(im, b))
    # stage B across images equals stage B image by image (separable loss, element-wise AdamW)
    x = d.encoder.preprocess([im for im in imgs for _ in range(2)])
    m = (torch.rand(6, 32, 32, generator=torch.Generator().manual_seed(0)) > 0.6).float()
    joint = d.refiner.refine_batch(x, m, [2, 2, 2])
    for k in range(3):
        torch.testing.assert_close(joint[k], d.refiner.refine(x[2 * k:2 * k + 2], m[2 * k:2 * k + 2]), atol=2e-5,
                                   rtol=0)
    d.refiner.mode, d.refiner.merge = 'code', 'mean'
    joint = d.refiner.refine_batch(x, m, [2, 2, 2])
    torch.testing.assert_close(joint[1], d.refiner.refine(x[2:4], m[2:4]), atol=2e-5, rtol=0)
    # queries in one batch
    q = d.describe_queries(imgs, [[5, 5, 20, 30]] * 3)
    np.testing.assert_allclose(q[2], d.describe_query(imgs[2], [5, 5, 20, 30]), atol=1e-6)


def test_amp_reaches_the_encoder_and_stage_b_stays_fp32(models):  # noqa: F811
    d32 = build(models, device='cpu')
    d16 = build(models, device='cpu', amp='bf16')
    assert d16.encoder.amp == d16.proposals.amp == d16.masks.amp == 'bf16'
    dtypes = []
    h = d16.encoder.visual.transformer.resblocks[0].mlp.c_fc.register_forward_hook(
        lambda m, i, o: dtypes.append(o.dtype))
    imgs = [image(20), image(21)]
    e16 = d16.encoder.embed(imgs)
    assert torch.bfloat16 in dtypes and e16.dtype == torch.float32
    dtypes.clear()
    x = d16.encoder.preprocess(imgs)
    m = torch.ones(2, 32, 32)
    with torch.autocast('cpu', dtype=torch.bfloat16):      # even inside an autocast region
        r16 = d16.refiner.refine(x, m)
    h.remove()
    assert dtypes and set(dtypes) == {torch.float32}, 'stage B ran in fp32'
    torch.testing.assert_close(r16, d32.refiner.refine(x, m))
    cos = F.cosine_similarity(e16, d32.encoder.embed(imgs), dim=-1)
    assert float(cos.min()) > 0.98


def test_antialiased_resize_matches_pil_on_a_real_photo():
    from queryvision_mm.testing.demo_data.demo_photos import load_rgb, locate_photos
    from queryvision_mm.models.retrievers.mao_components import resize_batch
    photo = np.asarray(load_rgb(locate_photos(['astronaut'])['astronaut']))
    for (x0, y0, x1, y1), size in (((0, 0, 512, 512), 224), ((0, 0, 512, 400), 64), ((200, 200, 230, 220), 224)):
        crop = np.ascontiguousarray(photo[y0:y1, x0:x1])
        pil = np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC)).astype(np.float32)
        ours = resize_batch([crop], size, (0, 0, 0), (1, 1, 1))[0].permute(1, 2, 0).numpy() * 255
        d = np.abs(ours - pil)
        assert d.mean() <= 0.3 and np.percentile(d, 99) < 1.0 and d.max() <= 6, (size, d.mean(), d.max())
        if size == 64:   # plain bicubic (the old resize) aliases when downscaling 8x
            old = resize_batch([crop], size, (0, 0, 0), (1, 1, 1), antialias=False)[0].permute(1, 2, 0).numpy()
            assert np.abs(old * 255 - pil).mean() > 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_cuda_pipeline_equals_cpu(models):  # noqa: F811
    cpu = build(models, device='cpu')
    gpu = build(models, device='cuda')
    assert all(p.is_cuda for p in gpu.parameters())
    imgs = [image(30), image(31, 60, 40)]
    for a, b in zip(cpu.describe_gallery_batch(imgs), gpu.describe_gallery_batch(imgs)):
        assert torch.equal(a['boxes'], b['boxes'])
        np.testing.assert_allclose(b['descriptor'], a['descriptor'], atol=1e-3)
