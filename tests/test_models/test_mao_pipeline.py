"""MaO gallery pipeline on tiny randomly initialised models of the real classes, saved and loaded through the real
loaders (transformers OWLv2 / DINOv2 from local folders, segment-anything SAM from a state dict, open_clip CLIP
local-dir): crop geometry, proposals (objectness threshold, NMS, box conversion vs the model's own forward), masks
(batched vs SAM's single-box predictor), encoders, the describer (objects -> one descriptor; none -> whole image)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from queryvision_mm.models.retrievers import (QVMaODescriber, QVOWLv2Objectness, QVSAMBoxMasks, build_sam_from_arch,
                                              crop_padded, square_crop_box)

DEFAULT_SCOPE = 'mmpretrain'
transformers = pytest.importorskip('transformers')
open_clip = pytest.importorskip('open_clip')
pytest.importorskip('segment_anything')
SAM_ARCH = dict(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2, prompt_dim=32, mlp_dim=64,
                decoder_depth=1, decoder_heads=2)
CLIP = dict(embed_dim=24, vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32),
            text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    from queryvision_mm.utils.open_clip_loader import save_open_clip_dir
    root = tmp_path_factory.mktemp('mao_models')
    torch.manual_seed(0)
    owl_cfg = transformers.Owlv2Config(
        text_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         vocab_size=64, max_position_embeddings=16),
        vision_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           image_size=64, patch_size=16), projection_dim=16)
    transformers.Owlv2ForObjectDetection(owl_cfg).save_pretrained(root / 'owlv2')
    dino_cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, image_size=28, patch_size=14)
    transformers.Dinov2Model(dino_cfg).save_pretrained(root / 'dinov2')
    torch.save(build_sam_from_arch(**SAM_ARCH).state_dict(), root / 'sam.pth')
    clip = save_open_clip_dir(open_clip.CLIP(**CLIP), CLIP, str(root / 'clip'))
    return root, clip


def image(seed=0, h=48, w=80):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_crop_geometry():
    assert square_crop_box([10, 20, 30, 60]) == (0, 20, 40, 60)           # side max(w, h) = 40
    assert square_crop_box([10, 20, 30, 60], 224) == (-92, -72, 132, 152)  # minimum crop size
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert crop_padded(a, (-1, 1, 2, 4)).tolist() == [[0, 4, 5], [0, 8, 9], [0, 0, 0]]


def test_owlv2_proposals(models):
    root, _ = models
    prop = QVOWLv2Objectness(str(root / 'owlv2'), score_thr=0.2, nms_iou=0.4)
    img = image()
    boxes, scores = prop(img)
    assert len(boxes) > 0 and (scores > 0.2).all() and (scores[:-1] >= scores[1:]).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 48).all()
    from torchvision.ops import box_iou
    iou = box_iou(boxes, boxes).fill_diagonal_(0)
    assert float(iou.max()) <= 0.4 + 1e-6
    # the best box equals the model's own forward output (objectness + cxcywh of the padded square)
    pixels = prop.processor(images=img, return_tensors='pt')['pixel_values']
    out = prop.model(input_ids=torch.tensor([[1, 2]]), pixel_values=pixels)
    best = int(out.objectness_logits[0].argmax())
    cx, cy, w, h = (out.pred_boxes[0, best] * 80).tolist()
    ref = torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]).round()
    ref[0::2], ref[1::2] = ref[0::2].clamp(0, 80), ref[1::2].clamp(0, 48)
    torch.testing.assert_close(boxes[0], ref)
    assert float(scores[0]) == pytest.approx(float(torch.sigmoid(out.objectness_logits[0, best])), rel=1e-5)
    assert len(QVOWLv2Objectness(str(root / 'owlv2'), score_thr=1.1)(img)[0]) == 0
    with pytest.raises(FileNotFoundError, match='local model folder not found'):
        QVOWLv2Objectness(str(root / 'nope'))


def test_sam_masks_batched_equal_single(models):
    root, _ = models
    sam = QVSAMBoxMasks(str(root / 'sam.pth'), model_type='custom', arch=SAM_ARCH)
    img = image(1)
    boxes = torch.tensor([[5., 5., 30., 40.], [40., 10., 75., 30.]])
    masks = sam(img, boxes)
    assert masks.shape == (2, 48, 80) and masks.dtype == torch.bool
    single, _, _ = sam.predictor.predict(box=boxes[1].numpy(), multimask_output=False)
    assert np.array_equal(masks[1].numpy(), single[0])
    assert sam(img, torch.zeros(0, 4)).shape == (0, 48, 80)
    with pytest.raises(FileNotFoundError, match='SAM checkpoint not found'):
        QVSAMBoxMasks(str(root / 'none.pth'))
    with pytest.raises(KeyError, match='unknown model_type'):
        QVSAMBoxMasks(str(root / 'sam.pth'), model_type='vit_x')


def test_describer_end_to_end_and_fallback(models):
    from mmpretrain.registry import MODELS
    root, clip = models
    cfg = dict(type='QVMaODescriber',
               encoder=dict(type='QVOpenCLIPCropEncoder', model_name=clip),
               proposals=dict(type='QVOWLv2Objectness', model_dir=str(root / 'owlv2'), max_objects=3),
               masks=dict(type='QVSAMBoxMasks', checkpoint=str(root / 'sam.pth'), model_type='custom', arch=SAM_ARCH),
               refine=dict(iters=3, layers='last'))
    mao = MODELS.build(cfg)
    assert isinstance(mao, QVMaODescriber) and mao.min_crop_size == 32
    img = image(2)
    out = mao.describe_gallery(img)
    assert not out['fallback'] and 1 <= len(out['boxes']) <= 3 and out['masks'].shape[1:] == (48, 80)
    assert out['descriptor'].shape == (24, ) and abs(np.linalg.norm(out['descriptor']) - 1) < 1e-5
    plain = QVMaODescriber(encoder=mao.encoder, proposals=mao.proposals, masks=mao.masks, refine=None)
    assert not np.allclose(plain.describe_gallery(img)['descriptor'], out['descriptor'], atol=1e-4), 'stage B moved it'
    empty = QVMaODescriber(encoder=mao.encoder, proposals=None).describe_gallery(img)
    whole = F.normalize(mao.encoder.encode(mao.encoder.preprocess([img])), dim=-1)[0].detach().numpy()
    assert empty['fallback'] and np.allclose(empty['descriptor'], whole, atol=1e-6)
    q = mao.describe_query(img, [10, 10, 20, 30])
    crop = crop_padded(img, square_crop_box([10, 10, 20, 30]))
    assert crop.shape == (20, 20, 3) and np.allclose(q, mao.encoder.embed([crop])[0].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match='uint8 RGB'):
        mao.describe_gallery(img.astype(np.float32))


def test_dinov2_encoder_loads_local_folder(models):
    from queryvision_mm.models.retrievers import QVDINOv2CropEncoder
    root, _ = models
    enc = QVDINOv2CropEncoder(str(root / 'dinov2'), input_size=28)
    emb = enc.embed([image(3), image(4, 30, 30)])
    assert emb.shape == (2, 32) and torch.allclose(emb.norm(dim=-1), torch.ones(2))
    model = transformers.Dinov2Model.from_pretrained(str(root / 'dinov2')).eval()
    torch.testing.assert_close(enc.encode(enc.preprocess([image(3)])), model(pixel_values=enc.preprocess([image(3)])).pooler_output)
