"""QKS on a tiny randomly initialised open_clip CLIP saved and reloaded through the real loader: frozen tokens,
Q-Former, max-over-tokens scoring vs a plain reference, CLIP projection start, the official ASL value, zero-shot
head vs open_clip's own encode_image, clear errors."""
import json

import pytest
import torch

open_clip = pytest.importorskip('open_clip')

from mmpretrain.registry import MODELS  # noqa: E402
from mmpretrain.structures import DataSample  # noqa: E402

from queryvision_mm.utils.open_clip_loader import save_open_clip_dir  # noqa: E402
from queryvision_mm.utils.text_embeddings import encode_class_names, save_class_embeddings  # noqa: E402

TINY = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=16, head_width=32),
            text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2))
SEEN, UNSEEN = ['cat', 'dog', 'car'], ['bus', 'tree']
DEFAULT_SCOPE = 'mmpretrain'


@pytest.fixture(scope='module')
def assets(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp('qks')
    ref = open_clip.CLIP(**TINY).eval()
    name = save_open_clip_dir(ref, TINY, str(root / 'clip'))
    tok = open_clip.get_tokenizer('ViT-B-16')
    emb = encode_class_names(ref, tok, SEEN + UNSEEN, ['a photo of a {}.', 'there is a {} in the scene.'])
    path = str(root / 'labels.safetensors')
    save_class_embeddings(path, emb, SEEN + UNSEEN)
    return ref, name, path, emb


def build(assets, head='QVQKSHead', neck=True):
    ref, name, path, _ = assets
    cfg = dict(
        type='QVQKSClassifier',
        backbone=dict(type='QVCLIPVisionTokens', model_name=name),
        neck=dict(type='QVQFormerNeck', num_layers=2, num_queries=4, encoder_width=64, hidden_size=64, num_heads=2,
                  ffn_dims=128) if neck else None,
        head=dict(type=head, embed_file=path, num_seen=len(SEEN), class_names=SEEN + UNSEEN,
                  **(dict(in_dims=64, out_dims=32) if head == 'QVQKSHead' else {})))
    torch.manual_seed(1)
    return MODELS.build(cfg)


def samples(labels):
    return [DataSample().set_gt_label(lb) for lb in labels]


def test_projection_starts_from_clip_and_backbone_stays_frozen(assets):
    ref = assets[0]
    model = build(assets)
    torch.testing.assert_close(model.head.proj.detach(), ref.visual.proj.detach())
    assert model.backbone.visual.proj is None and not any(p.requires_grad for p in model.backbone.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    assert not model.backbone.visual.training, 'frozen tower stays in eval mode'
    loss = model.loss(torch.randn(2, 3, 32, 32), samples([[0, 2], [1]]))['loss']
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not any(k.startswith('backbone.') for k in changed)
    assert 'head.proj' in changed and 'neck.query_tokens' in changed
    assert any(k.startswith('neck.bert.encoder.layer.1.crossattention') for k in changed), 'cross-attn every layer'


def test_every_trainable_parameter_gets_a_gradient(assets):
    """DDP (find_unused_parameters off, the configs' setting) stops at the second iteration when a trainable parameter
    gets no gradient: the Q-Former's text-token FFNs (``intermediate`` / ``output``) never see a token."""
    model = build(assets)
    model.train()
    model.loss(torch.randn(2, 3, 32, 32), samples([[0, 2], [1]]))['loss'].backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f'trainable parameters without a gradient: {unused}'


def test_tokens_are_clip_ln_post_tokens(assets):
    ref = assets[0]
    model = build(assets)
    x = torch.randn(2, 3, 32, 32)
    tokens = model.backbone(x)[0]
    assert tokens.shape == (2, 1 + 4, 64)
    ref.visual.output_tokens = True
    pooled, patch = ref.visual(x)
    ref.visual.output_tokens = False
    torch.testing.assert_close(tokens[:, 1:], patch)
    torch.testing.assert_close(tokens[:, 0] @ ref.visual.proj, pooled)


def test_max_over_tokens_against_reference(assets):
    model = build(assets)
    head = model.head
    feats = (torch.randn(3, 4, 64), )
    emb = assets[3]
    for training, cols in ((True, len(SEEN)), (False, len(SEEN + UNSEEN))):
        head.train(training)
        out = head(feats)
        z = feats[0] @ head.proj
        ref = torch.empty(3, cols)
        for b in range(3):
            for c in range(cols):
                ref[b, c] = max(float(z[b, q] @ emb[c]) for q in range(4))  # unnormalised dot products
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    head.reduce, head.k = 'topk_sum', 2
    top2 = torch.einsum('bqd,cd->bqc', feats[0] @ head.proj, emb).topk(2, dim=1).values.sum(1)
    torch.testing.assert_close(head(feats), top2, rtol=1e-5, atol=1e-5)


def test_loss_is_the_official_asl(assets):
    model = build(assets)
    model.train()
    feats = (torch.randn(2, 4, 64), )
    score = model.head(feats)
    loss = model.head.loss(feats, samples([[0], [1, 2]]))['loss']
    y = torch.tensor([[1., 0, 0], [0, 1, 1]])
    p = torch.sigmoid(score).detach()
    w = torch.where(y > 0, torch.ones_like(p), p**4)
    ell = y * torch.log(torch.sigmoid(score).clamp(min=1e-5)) + (1 - y) * torch.log((1 - torch.sigmoid(score)).clamp(
        min=1e-5))
    torch.testing.assert_close(loss, -1000 * (w * ell).sum() / y.numel())


def test_unseen_label_in_training_is_an_error(assets):
    model = build(assets)
    model.train()
    with pytest.raises(ValueError, match='label index 3 is not a seen label'):
        model.loss(torch.randn(1, 3, 32, 32), samples([[3]]))


def test_predict_scores_seen_and_unseen(assets):
    model = build(assets)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model.predict(x, samples([[0], [4]]))
        logits = model.head(model.neck(model.backbone(x)))
    assert out[0].pred_score.shape == (5, )
    # pred_score = the raw logits (order-preserving), pred_label = the top-1 label, the head's num_seen travels along
    torch.testing.assert_close(torch.stack([o.pred_score for o in out]), logits)
    assert [int(o.pred_label[0]) for o in out] == logits.argmax(1).tolist() and out[0].num_seen == len(SEEN)
    model.head.pred_score_mode = 'sigmoid'  # mmpretrain's behaviour, still available
    with torch.no_grad():
        out = model.predict(x, samples([[0], [4]]))
    torch.testing.assert_close(out[0].pred_score, torch.sigmoid(logits[0]))
    with pytest.raises(ValueError, match='pred_score_mode'):
        build_head = dict(type='QVQKSHead', embed_file=assets[2], num_seen=3, in_dims=64, out_dims=32,
                          pred_score_mode='prob')
        MODELS.build(build_head)


def _orthonormal_bank(head, dims, seed):
    """Replace the zero-shot head's projection by the identity and its label bank by orthonormal directions (random
    norms: the head normalises), so that an image feature with coordinates a_c along them has cosine a_c."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dims, dims, generator=g))
    n = head.label_embed.size(0)
    head.label_embed = q[:, :n].t() * (1 + 5 * torch.rand(n, 1, generator=g))
    head.proj = torch.eye(dims)
    return q


def test_zero_shot_ranking_follows_the_raw_cosines(assets):
    """Issue 13.6: with cosines in [0.2, 0.35], sigmoid(100 cos) is exactly 1.0 in float32, so every label tied and
    mAP / F1@K followed the column order; the metric must rank exactly as the raw cosines (official clip_eval.py)."""
    from queryvision_mm.evaluation.metrics import QVZSLMultiLabelMetric
    model = build(assets, head='QVCLIPZeroShotHead', neck=False)
    head = model.head.eval()
    dims, n_img, n_lab = 32, 40, len(SEEN + UNSEEN)
    q = _orthonormal_bank(head, dims, seed=3)
    g = torch.Generator().manual_seed(4)
    cos = 0.2 + 0.15 * torch.rand(n_img, n_lab, generator=g)
    rest = torch.sqrt(1 - (cos**2).sum(1, keepdim=True)) * q[:, n_lab].unsqueeze(0)  # orthogonal remainder
    feats = (cos @ q[:, :n_lab].t() + rest).unsqueeze(1).repeat(1, 3, 1)  # (B, tokens, dims); token 0 is used
    targets = (torch.rand(n_img, n_lab, generator=g) < 0.4)
    targets[torch.arange(n_img), torch.randint(0, len(SEEN), (n_img, ), generator=g)] = True
    targets[torch.arange(n_img), torch.randint(len(SEEN), n_lab, (n_img, ), generator=g)] = True
    labels = [torch.nonzero(t).flatten().tolist() for t in targets]
    with torch.no_grad():
        preds = head.predict((feats, ), samples(labels))
    with torch.no_grad():
        assert torch.allclose(head((feats, )) / 100, cos, atol=1e-5), 'cosines in [0.2, 0.35] as intended'

    def metric_on(rows):
        m = QVZSLMultiLabelMetric(num_seen=len(SEEN), topk=(1, 2), splits=('seen', 'zsl', 'gzsl'))
        m.process({}, rows)
        return m.compute_metrics(m.results)

    ours = metric_on([p.to_dict() for p in preds])
    reference = metric_on([dict(pred_score=c.double(), gt_label=torch.tensor(lb)) for c, lb in zip(cos, labels)])
    assert ours == pytest.approx(reference)  # mAP, P/R/F1@K of every split as ranked by the raw cosines
    scores = torch.stack([p.pred_score for p in preds])
    assert all(len(set(s.tolist())) == n_lab for s in scores), 'no ties'
    assert torch.equal(scores.argsort(1, descending=True), cos.argsort(1, descending=True))
    assert [int(p.pred_label[0]) for p in preds] == cos.argmax(1).tolist()


def test_qks_logits_keep_their_order_when_large(assets):
    """QKS logits are unbounded dot products (CLIP text norms ~8-10): pred_score keeps every order (float32 sigmoid
    would tie all logits above ~17)."""
    head = build(assets).head.eval()
    logits = torch.linspace(18.0, 60.0, 5)[torch.tensor([3, 0, 4, 1, 2])].unsqueeze(0)
    pred = head._get_predictions(logits, None)[0]
    assert torch.equal(pred.pred_score.argsort(descending=True), logits[0].argsort(descending=True))
    assert int(pred.pred_label[0]) == 2


def test_zero_shot_head_equals_open_clip(assets):
    ref, _, _, emb = assets
    model = build(assets, head='QVCLIPZeroShotHead', neck=False)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model.head(model.backbone(x))
        img = torch.nn.functional.normalize(ref.encode_image(x), dim=-1)
        expected = 100 * img @ torch.nn.functional.normalize(emb, dim=-1).t()
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_bad_configuration_errors(assets, tmp_path):
    _, name, path, _ = assets
    with pytest.raises(ValueError, match='differs|mismatch|class'):
        MODELS.build(dict(type='QVQKSHead', embed_file=path, num_seen=3, class_names=['cat', 'dog', 'cow', 'bus',
                                                                                          'tree'], in_dims=64,
                          out_dims=32))
    with pytest.raises(ValueError, match='num_seen=9'):
        MODELS.build(dict(type='QVQKSHead', embed_file=path, num_seen=9, in_dims=64, out_dims=32))
    with pytest.raises(ValueError, match='random'):
        MODELS.build(dict(type='QVCLIPVisionTokens', model_name='ViT-B-16'))
