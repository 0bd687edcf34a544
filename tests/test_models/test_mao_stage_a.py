"""MaO stage A at scale: InfoNCE masks (gathered columns, scene instances), GradCache micro-batches (same loss and
gradients as one graph, dropout and autocast replayed, no activations kept after the forward), negatives gathered
across 2 gloo processes (= the single-process loss and gradients on the concatenated batch, cross-rank same-instance
pairs masked), the learning-rate schedule of the shipped config over the real number of iterations."""
import json
import os.path as osp
import socket

import numpy as np
import pytest
import torch
from mmengine.config import Config

from conftest import REPO

DEFAULT_SCOPE = 'mmpretrain'
transformers = pytest.importorskip('transformers')
pytest.importorskip('peft')


@pytest.fixture(scope='module')
def dino_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('stage_a') / 'dinov2'
    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    image_size=28, patch_size=14)
    torch.manual_seed(0)
    transformers.Dinov2Model(cfg).save_pretrained(root)
    return str(root)


def build(dino_dir, seed=0, **kwargs):
    import queryvision_mm  # noqa: F401
    from mmpretrain.registry import MODELS
    kwargs.setdefault('lora', dict(r=4, lora_dropout=0.0))
    torch.manual_seed(seed)
    model = MODELS.build(dict(type='QVMaOContrastiveModel', encoder=dict(type='QVDINOv2CropEncoder',
                                                                         model_dir=dino_dir, input_size=28), **kwargs))
    g = torch.Generator().manual_seed(seed + 1)
    for p in model.parameters():   # LoRA B starts at 0: give the adapters values so every gradient is non-trivial
        if p.requires_grad:
            p.data = torch.randn(p.shape, generator=g) * 0.05
    return model.train()


def batch(n_scenes=4, seed=0, crops=(2, 3, 1, 2)):
    rng = np.random.default_rng(seed)
    return [dict(crops=[rng.integers(0, 255, (28, 28, 3), dtype=np.uint8) for _ in range(crops[i % len(crops)])],
                 query=rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)) for i in range(n_scenes)]


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def step(model, inputs, samples, autocast=False):
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        loss = model(inputs, samples)['loss_info_nce']
    loss.backward()
    return loss.detach(), grads(model)


def test_info_nce_masks_gathered_columns_and_scene_instances():
    from queryvision_mm.models.retrievers import multi_object_info_nce
    g = torch.Generator().manual_seed(0)
    c = torch.nn.functional.normalize(torch.randn(2, 3, generator=g), dim=-1)
    q = torch.nn.functional.normalize(torch.randn(4, 3, generator=g), dim=-1)
    # rows = this rank's 2 scenes, columns = the 4 gathered queries; own queries at columns 1 and 2
    loss = multi_object_info_nce(c, q, [5, 6], 0.5, query_instances=[5, 5, 6, 7], positives=[1, 2],
                                 scene_instances=[[5, 7], [6]])
    s = (c @ q.t() / 0.5).numpy()
    ref = [-s[0, 1] + np.log(np.exp(s[0, [1, 2]]).sum()),     # column 0: same instance, column 3: in the scene
           -s[1, 2] + np.log(np.exp(s[1]).sum())]
    assert float(loss) == pytest.approx(float(np.mean(ref)), rel=1e-6)
    with pytest.raises(ValueError, match='column instances'):
        multi_object_info_nce(c, q, [5, 6], query_instances=[5, 5])


def test_gradcache_same_loss_and_gradients_as_one_graph(dino_dir):
    inputs, samples = batch(), [dict(instance=i) for i in range(4)]
    loss0, g0 = step(build(dino_dir, grad_checkpointing=True), inputs, samples)
    for micro in (1, 3):
        loss1, g1 = step(build(dino_dir, grad_checkpointing=True, micro_batch_size=micro), inputs, samples)
        torch.testing.assert_close(loss1, loss0, rtol=1e-6, atol=1e-6)
        assert g1.keys() == g0.keys() and g0
        for n in g0:
            torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=n)
    # dropout masks and bf16 autocast of the no-grad pass are replayed in the recomputation: one micro-batch holding
    # the whole batch equals the plain graph exactly (a fresh random state or fp32 recomputation would not)
    n = sum(len(x['crops']) for x in inputs) + len(inputs)
    lora = dict(r=4, lora_dropout=0.5)
    torch.manual_seed(3)
    loss0, g0 = step(build(dino_dir, lora=lora), inputs, samples, autocast=True)
    torch.manual_seed(3)
    loss1, g1 = step(build(dino_dir, lora=lora, micro_batch_size=n), inputs, samples, autocast=True)
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=0)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-6, atol=1e-7, msg=k)


def test_gradcache_keeps_no_activation_after_the_forward(dino_dir):
    """Between forward and backward, GradCache holds the pixels only (a plain graph holds every activation)."""
    inputs, samples = batch(), [dict(instance=i) for i in range(4)]
    kept = {}
    for micro in (None, 2):
        model = build(dino_dir, micro_batch_size=micro)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(inputs, samples)['loss_info_nce']
        kept[micro] = sum(saved.values())
        loss.backward()
    pixels = (sum(len(x['crops']) for x in inputs) + 4) * 3 * 28 * 28 * 4    # kept by both
    assert pixels <= kept[2] and kept[2] - pixels < (kept[None] - pixels) / 10, (kept, pixels)


def test_pair_dataset_gives_scene_instances(tmp_path):
    from PIL import Image

    from queryvision_mm.datasets import QVSoIRPairDataset
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(tmp_path / 's.jpg')
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(tmp_path / 'q.jpg')
    (tmp_path / 'a.json').write_text(json.dumps({
        's.jpg': dict(bbox=[[2, 2, 20, 20], [25, 10, 50, 35]], ins=[3, 8, -1], is_query=False),
        'q.jpg': dict(bbox=[3, 3, 25, 25], ins=8, is_query=True)}))
    ds = QVSoIRPairDataset(str(tmp_path / 'a.json'), crop_source='gt', data_prefix=str(tmp_path), min_crop_size=28)
    assert ds[0]['data_samples'] == dict(instance=8, scene_instances=[3, 8])


# ------------------------------------------------------------------------------------------- 2 gloo processes
SCENE_INS = [[7], [1], [2, 1], [7]]     # rank 0: scenes 0, 1; rank 1: scenes 2, 3
QUERY_INS = [7, 1, 2, 7]
ALLOWED = [[0, 1, 2], [0, 1, 2, 3], [0, 2, 3], [1, 2, 3]]   # columns left in each row's denominator


def _worker(rank, world, port, dino_dir, out_dir):
    import torch.distributed as torch_dist
    torch.set_num_threads(1)
    torch_dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world)
    try:
        inputs = batch(4, seed=5)
        samples = [dict(instance=i, scene_instances=s) for i, s in zip(QUERY_INS, SCENE_INS)]
        mine = slice(2 * rank, 2 * rank + 2)
        model = build(dino_dir, micro_batch_size=2, grad_checkpointing=True)
        loss, g = step(model, inputs[mine], samples[mine])
        for t in [loss] + list(g.values()):        # what DDP does with the gradients: the mean over ranks
            torch_dist.all_reduce(t)
            t /= world
        ref_model = build(dino_dir, gather_negatives=False)
        ref_loss, ref_g = step(ref_model, inputs, samples)           # one process, the concatenated batch
        local = build(dino_dir, gather_negatives=False)(inputs[mine], samples[mine])['loss_info_nce'].detach()
        torch_dist.all_reduce(local)                                # the former loss: this rank's queries only
        with torch.no_grad():
            desc = ref_model._descriptors([c for x in inputs for c in x['crops']] + [x['query'] for x in inputs])
            counts = [len(x['crops']) for x in inputs]
            img = torch.stack([torch.nn.functional.normalize(d.mean(0), dim=-1)
                               for d in desc[:sum(counts)].split(counts)])
            s = (img @ desc[sum(counts):].t() / 0.07).double()
        hand = float(np.mean([-s[b, b] + torch.logsumexp(s[b, ALLOWED[b]], 0) for b in range(4)]))
        diff = max(float((g[k] - ref_g[k]).abs().max()) for k in ref_g)
        scale = max(float(v.abs().max()) for v in ref_g.values())
        with open(osp.join(out_dir, f'rank{rank}.json'), 'w') as f:
            json.dump(dict(loss=float(loss), ref=float(ref_loss), hand=hand, local=float(local) / world,
                           grad_diff=diff, grad_scale=scale), f)
    finally:
        torch_dist.destroy_process_group()


def test_negatives_gathered_across_two_processes_equal_one_process(dino_dir, tmp_path):
    """2 gloo processes x 2 scenes = one process x 4 scenes: same loss, same (DDP-averaged) gradients; the queries of
    the other rank are negatives, except the same-instance ones (scene 0 and rank 1's query 3 show instance 7;
    scene 2 also holds instance 1 of rank 0's query 1). The former loss saw this rank's queries only."""
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(2, port, dino_dir, str(tmp_path)), nprocs=2, join=True, start_method='fork')
    res = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in range(2)]
    for r in res:
        assert abs(r['loss'] - r['ref']) < 1e-6, r
        assert abs(r['ref'] - r['hand']) < 1e-5, r          # the masks of ALLOWED, cross-rank pairs included
        assert r['grad_diff'] <= 1e-6 * max(1.0, r['grad_scale']), r
        assert abs(r['local'] - r['ref']) > 1e-3, r


# ------------------------------------------------------------------------------------------- schedule
def lr_per_iteration(epoch_length, scheduler_cfg, lr=5e-5):
    from mmengine.optim import OptimWrapper
    from mmengine.registry import PARAM_SCHEDULERS
    import queryvision_mm  # noqa: F401
    opt = OptimWrapper(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr))
    sched = PARAM_SCHEDULERS.build(dict(scheduler_cfg), default_args=dict(optimizer=opt, epoch_length=epoch_length))
    lrs = []
    for _ in range(epoch_length):      # the Runner: train step at the current rate, then the iteration's scheduler
        lrs.append(opt.param_groups[0]['lr'])
        opt.step()
        sched.step()
    return np.array(lrs)


@pytest.mark.parametrize('iters', [430, 7])
def test_config_lr_decays_to_1e6_over_all_iterations(iters):
    """5e-5 at the first iteration, 1e-6 at the last, exponentially in between (never at the floor early): the
    former ExponentialLR(gamma=0.93, end=54) was at 1e-6 from iteration 54 of ~430."""
    cfg = Config.fromfile(osp.join(REPO, 'configs/mao/voxdet_dinov2_lora.py'))
    assert cfg.optim_wrapper.optimizer.lr == 5e-5 and cfg.train_cfg.max_epochs == 1
    lrs = lr_per_iteration(iters, cfg.param_scheduler)
    assert lrs[0] == pytest.approx(5e-5, rel=1e-9) and lrs[-1] == pytest.approx(1e-6, rel=1e-2)
    assert (np.diff(lrs) < 0).all() and (lrs[:-1] > 1e-6 * 1.001).all()
    mid = (iters - 1) / 2
    assert lrs[int(mid)] == pytest.approx(5e-5 * (1e-6 / 5e-5) ** (int(mid) / (iters - 1)), rel=1e-6)


def test_amp_wrapper_in_config():
    cfg = Config.fromfile(osp.join(REPO, 'configs/mao/voxdet_dinov2_lora.py'))
    assert cfg.optim_wrapper.type == 'QVAmpOptimWrapper' and cfg.optim_wrapper.dtype == 'bfloat16'
    assert cfg.model.grad_checkpointing and cfg.model.micro_batch_size == 64 and cfg.model.gather_negatives
