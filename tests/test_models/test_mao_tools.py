"""MaO data and tools: VoxDet-SoIR ``anns.pt`` (official layout, safe loading, path remapping, set filter, errors),
extract -> index -> evaluate on a tiny gallery with tiny saved models (resume from the cache, foreign cache refused,
unreadable image named or skipped), search from the saved index, and the search grid PNG."""
import json
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from conftest import REPO
from test_mao_pipeline import SAM_ARCH, models  # noqa: F401  (module fixture)

DEFAULT_SCOPE = 'mmpretrain'


def write_official(path, root):
    """anns.pt as pihash2k/VoxDet-SoIR writes it: absolute paths of another machine, RLE masks, -1 padding."""
    rle = dict(counts=[3, 4, 5], size=(3, 4), transpose=False)
    anns = {
        '/home/author/VoxDet/RoboTools/test_video/a_1/rgb/0.jpg': dict(bbox=(2, 3, 10, 12), mask=rle, is_query=True,
                                                                       ins=1, set='RoboTools'),
        '/home/author/VoxDet/RoboTools/test/s0.jpg': dict(bbox=[[1, 1, 5, 5], [6, 6, 9, 9]], mask=[], is_query=False,
                                                          ins=[1, 4, -1], set='RoboTools'),
        '/home/author/VoxDet/OWID/P2/images/x.jpg': dict(bbox=[[1, 1, 4, 4]], mask=[], is_query=False, ins=[9],
                                                         num_ins=[1], set='OWID'),
    }
    torch.save(anns, path)


def test_voxdet_anns_pt(tmp_path):
    from queryvision_mm.datasets import QVSoIRDataset
    write_official(tmp_path / 'anns.pt', tmp_path)
    ds = QVSoIRDataset(str(tmp_path / 'anns.pt'), sets=('RoboTools', ), path_strip='/home/author/VoxDet/',
                       data_prefix=str(tmp_path / 'data'))
    assert ds.metainfo['num_queries'] == 1 and ds.metainfo['num_gallery'] == 1 and len(ds) == 2
    q, g = ds.get_data_info(0), ds.get_data_info(1)
    assert q['img_path'] == str(tmp_path / 'data/RoboTools/test_video/a_1/rgb/0.jpg') and q['instances'] == [1]
    assert q['query_box'] == [2, 3, 10, 12] and g['instances'] == [1, 4] and len(g['gt_boxes']) == 2
    assert len(QVSoIRDataset(str(tmp_path / 'anns.pt'))) == 3
    with pytest.raises(ValueError, match='no gallery images in sets'):
        QVSoIRDataset(str(tmp_path / 'anns.pt'), sets=('PerMiR', ))
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({'q.jpg': dict(bbox=[5, 5, 2, 9], ins=1, is_query=True), 'g.jpg': dict(ins=[1],
                                                                                                      is_query=False)}))
    with pytest.raises(ValueError, match=r'bad.json: q.jpg: bbox must be'):
        QVSoIRDataset(str(bad))

    class Evil:
        def __reduce__(self):
            return (print, ('pwned', ))

    torch.save({'a.jpg': Evil()}, tmp_path / 'evil.pt')
    with pytest.raises(ValueError, match='not a plain-data torch file'):
        QVSoIRDataset(str(tmp_path / 'evil.pt'))


def tiny_gallery(root):
    rng = np.random.default_rng(0)
    anns = {}
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(root / f'g{i}.jpg')
        anns[f'g{i}.jpg'] = dict(bbox=[], ins=[i % 2], is_query=False, set='t')
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / f'q{i}.jpg')
        anns[f'q{i}.jpg'] = dict(bbox=[5, 5, 30, 30], ins=i, is_query=True, set='t')
    (root / 'anns.json').write_text(json.dumps(anns))


def test_extract_index_search(models, tmp_path):  # noqa: F811
    from queryvision_mm.apis.mao import draw_search_grid, read_rgb, run_extract, search
    mroot, clip = models
    tiny_gallery(tmp_path)
    cfg = Config.fromfile(osp.join(REPO, 'configs/mao/demo_photos.py'))
    cfg.model.encoder.model_name = clip
    cfg.model.proposals.update(model_dir=str(mroot / 'owlv2'), max_objects=2)
    cfg.model.masks.update(checkpoint=str(mroot / 'sam.pth'), arch=SAM_ARCH)
    cfg.model.refine.iters = 2
    cfg.dataset.update(ann_file=str(tmp_path / 'anns.json'), sets=None, data_prefix=str(tmp_path))
    work = str(tmp_path / 'work')
    res = run_extract(cfg, work, progress=False)
    assert res['gallery'] == 4 and res['computed'] == 4 and res['num_queries'] == 2 and 0 <= res['mAP'] <= 100
    saved = json.loads(open(osp.join(work, 'results.json')).read())
    assert saved['mAP'] == res['mAP'] and len(saved['rankings']) == 2
    from queryvision_mm.apis.mao_extract import iter_cache_meta
    cache = json.loads(open(next(iter_cache_meta(osp.join(work, 'gallery_cache')))).read())
    assert cache['masks'] and set(cache['masks'][0]) == {'size', 'counts'}, 'SAM masks cached as COCO RLE'
    again = run_extract(cfg, work, progress=False)
    assert again['cached'] == 4 and again['computed'] == 0 and again['rankings'] == res['rankings']
    _, q, ranked = search(cfg, osp.join(work, 'index'), str(tmp_path / 'q0.jpg'), [5, 5, 30, 30], topk=4)
    assert [osp.basename(p) for p, _ in ranked] == [osp.basename(p) for p in res['rankings'][str(tmp_path / 'q0.jpg')][:4]]
    png = draw_search_grid(_, read_rgb(str(tmp_path / 'q0.jpg')), [5, 5, 30, 30], q, ranked[:2],
                           str(tmp_path / 'grid.png'))
    assert Image.open(png).size[0] > 100
    cfg.model.refine.iters = 3
    with pytest.raises(ValueError, match='another model configuration'):
        run_extract(cfg, work, progress=False)
    (tmp_path / 'g3.jpg').write_bytes(b'not an image')
    cfg.model.refine.iters = 2
    with pytest.raises(OSError, match=r'failed to load image: .*g3.jpg'):
        run_extract(cfg, str(tmp_path / 'w2'), progress=False)
    res = run_extract(cfg, str(tmp_path / 'w3'), on_error='skip', progress=False)
    assert res['gallery'] == 3 and res['skipped'] == [str(tmp_path / 'g3.jpg')]


def test_info_nce_hand_computed():
    from queryvision_mm.models.retrievers import multi_object_info_nce
    c = torch.nn.functional.normalize(torch.tensor([[1., 0.], [0., 1.], [1., 1.]]), dim=-1)
    q = torch.nn.functional.normalize(torch.tensor([[1., 0.2], [0.3, 1.], [0.5, 1.]]), dim=-1)
    loss = multi_object_info_nce(c, q, [0, 1, 0], temperature=0.5)
    s = (c @ q.t() / 0.5).numpy()
    ref = [-s[0, 0] + np.log(np.exp(s[0, 0]) + np.exp(s[0, 1])),          # query 2 is the same instance: masked
           -s[1, 1] + np.log(np.exp(s[1]).sum()),
           -s[2, 2] + np.log(np.exp(s[2, 1]) + np.exp(s[2, 2]))]
    assert float(loss) == pytest.approx(float(np.mean(ref)), rel=1e-5)


def test_stage_a_lora_training_and_adapter_loading(models, tmp_path):  # noqa: F811
    from mmengine.runner import Runner

    from queryvision_mm.models.retrievers import QVDINOv2CropEncoder
    mroot, _ = models
    rng = np.random.default_rng(1)
    anns = {}
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(tmp_path / f's{i}.jpg')
        anns[f's{i}.jpg'] = dict(bbox=[[2, 2, 20, 20], [25, 10, 50, 35]], ins=[i % 2, 5], is_query=False, set='OWID')
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(tmp_path / f'q{i}.jpg')
        anns[f'q{i}.jpg'] = dict(bbox=[3, 3, 25, 25], ins=i, is_query=True, set='OWID')
    (tmp_path / 'anns.json').write_text(json.dumps(anns))
    cfg = Config.fromfile(osp.join(REPO, 'configs/mao/voxdet_dinov2_lora.py'))
    assert cfg.model.lora.r == 256 and cfg.optim_wrapper.optimizer.lr == 5e-5 and cfg.param_scheduler.eta_end == 1e-6
    cfg.model.encoder.update(model_dir=str(mroot / 'dinov2'), input_size=28)
    cfg.model.lora.r = 4
    cfg.train_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False)
    cfg.train_dataloader.dataset.update(ann_file=str(tmp_path / 'anns.json'), data_prefix=str(tmp_path),
                                        crop_source='gt', proposals_file=None, min_crop_size=28)
    cfg.optim_wrapper.optimizer.lr = 1e-2
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    model = runner.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all('lora_' in n for n in trainable), 'only the LoRA adapters train'
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runner.train()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all('lora_' in k for k in changed)
    adapter = tmp_path / 'work/lora_adapter'
    assert (adapter / 'adapter_config.json').is_file()
    base = QVDINOv2CropEncoder(str(mroot / 'dinov2'), input_size=28)
    tuned = QVDINOv2CropEncoder(str(mroot / 'dinov2'), input_size=28, lora_adapter=str(adapter))
    img = [rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)]
    assert not torch.allclose(base.embed(img), tuned.embed(img))
    assert not any('lora' in n for n, _ in tuned.named_parameters()), 'adapter merged into the weights'
    with pytest.raises(FileNotFoundError, match='adapter_config.json'):
        QVDINOv2CropEncoder(str(mroot / 'dinov2'), lora_adapter=str(tmp_path))


def test_stage_a_gradient_checkpointing_same_gradients_less_memory(models):  # noqa: F811
    """A stage-A step encodes every crop of 32 scenes with gradients (DINOv2-base: ~179 MiB of saved activations per
    crop in fp32, up to 32 x 17 crops per GPU): the shipped config recomputes the blocks instead; same loss and
    gradients, a fraction of the saved activations."""
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(osp.join(REPO, 'configs/mao/voxdet_dinov2_lora.py'))
    assert cfg.model.grad_checkpointing is True
    mroot, _ = models
    rng = np.random.default_rng(0)
    inputs = [dict(crops=[rng.integers(0, 255, (28, 28, 3), dtype=np.uint8) for _ in range(3)],
                   query=rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)) for _ in range(2)]
    results = {}
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = MODELS.build(dict(type='QVMaOContrastiveModel', encoder=dict(type='QVDINOv2CropEncoder',
                                                                             model_dir=str(mroot / 'dinov2'),
                                                                             input_size=28),
                                  lora=dict(r=4, lora_dropout=0.1), grad_checkpointing=ckpt))
        model.train()
        params = {p.data_ptr() for p in model.parameters()}
        saved = []

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                saved.append((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
            return t

        torch.manual_seed(1)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(inputs, dict(instance=[0, 1]))['loss_info_nce']
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results[ckpt] = (loss.detach(), grads, sum(dict(saved).values()))
    (l0, g0, m0), (l1, g1, m1) = results[False], results[True]
    torch.testing.assert_close(l1, l0)
    assert g0.keys() == g1.keys() and g0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], msg=n)
    assert m1 < m0 / 2, (m1, m0)


def test_stage_a_batches_scenes_with_different_numbers_of_crops(models, tmp_path):  # noqa: F811
    """OWLv2 gives every training scene its own number of proposals; the config's collate keeps them per scene
    (mmengine's pseudo_collate stopped at the first batch: "each data_itement in list of batch should be of equal
    size")."""
    from mmengine.registry import FUNCTIONS

    from mmpretrain.registry import DATASETS, MODELS
    mroot, _ = models
    rng = np.random.default_rng(2)
    anns = {}
    for i, n in enumerate((1, 2, 3)):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(tmp_path / f's{i}.jpg')
        anns[f's{i}.jpg'] = dict(bbox=[[2 + 10 * k, 2, 12 + 10 * k, 20] for k in range(n)], ins=[i], is_query=False,
                                 set='OWID')
        Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(tmp_path / f'q{i}.jpg')
        anns[f'q{i}.jpg'] = dict(bbox=[3, 3, 25, 25], ins=i, is_query=True, set='OWID')
    (tmp_path / 'anns.json').write_text(json.dumps(anns))
    cfg = Config.fromfile(osp.join(REPO, 'configs/mao/voxdet_dinov2_lora.py'))
    ds = DATASETS.build(dict(cfg.train_dataloader.dataset, ann_file=str(tmp_path / 'anns.json'),
                             data_prefix=str(tmp_path), crop_source='gt', proposals_file=None, min_crop_size=28))
    collate = FUNCTIONS.get(cfg.train_dataloader.collate_fn.type)
    batch = collate([ds[i] for i in range(3)])
    model = MODELS.build(dict(cfg.model, encoder=dict(cfg.model.encoder, model_dir=str(mroot / 'dinov2'),
                                                      input_size=28), lora=dict(cfg.model.lora, r=4)))
    model.train()
    loss = model(**model.data_preprocessor(batch, True), mode='loss')['loss_info_nce']
    assert torch.isfinite(loss)
    loss.backward()
