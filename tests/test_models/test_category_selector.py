"""CQ-DINO category selector: shapes, top-K gather and label mapping against hand-computed cases, forced GT,
recall@K, image targets with the parent mask, embedding-file checks."""
import pytest
import torch

from queryvision_mm.datasets import CategoryHierarchy
from queryvision_mm.models.layers import QVCategoryQuerySelector
from queryvision_mm.utils.text_embeddings import save_class_embeddings


def small(**kw):
    torch.manual_seed(0)
    args = dict(num_classes=6, img_in_channels=12, embed_dims=16, kv_dims=8, num_layers=2, num_heads=2, ffn_dims=32,
                dropout=0.0, topk=3)
    args.update(kw)
    return QVCategoryQuerySelector(**args)


def test_forward_shapes_and_gradients():
    sel = small()
    out = sel(torch.randn(2, 12, 3, 4))
    assert out['logits'].shape == (2, 6) and out['tokens'].shape == (2, 6, 16)
    picked = sel.select(out['logits'], out['tokens'])
    assert picked['indices'].shape == (2, 3) and picked['tokens'].shape == (2, 3, 16)
    assert sel.language_backbone.body.language_dim == 16  # what mmdet's GroundingDINO reads
    (picked['tokens'].sum() + out['logits'].sum()).backward()
    assert sel.category_embed.grad.abs().sum() > 0 and sel.scorer.weight.grad.abs().sum() > 0


def test_topk_gather_and_label_mapping_hand_computed():
    sel = small()
    logits = torch.tensor([[0.1, 0.9, -1.0, 0.5, 0.3, 0.0], [2.0, -2.0, 1.0, 0.0, 3.0, -1.0]])
    tokens = torch.arange(2 * 6 * 16, dtype=torch.float).view(2, 6, 16)
    picked = sel.select(logits, tokens)
    assert picked['indices'].tolist() == [[1, 3, 4], [4, 0, 2]], 'descending score'
    expected = torch.stack([tokens[0, [1, 3, 4]], tokens[1, [4, 0, 2]]])
    torch.testing.assert_close(picked['tokens'], expected)
    # ground truth labels of image 0: 4 -> slot 2, 1 -> slot 0, 5 not selected -> -1
    assert sel.local_labels(torch.tensor([4, 1, 5]), picked['indices'][0]).tolist() == [2, 0, -1]
    recall = sel.recall_at_k(picked['indices'], [torch.tensor([4, 1, 5, 5]), torch.tensor([2])])
    assert recall.item() == pytest.approx((2 / 3 + 1) / 2)
    assert torch.isnan(sel.recall_at_k(picked['indices'], [torch.zeros(0, dtype=torch.long)] * 2))


def test_force_gt_into_topk():
    sel = small(force_gt_in_topk=True)
    logits = torch.tensor([[0.1, 0.9, -1.0, 0.5, 0.3, 0.0]])  # top-3: 1, 3, 4
    tokens = torch.randn(1, 6, 16)
    picked = sel.select(logits, tokens, gt_labels=[torch.tensor([2, 1])])
    assert picked['indices'].tolist() == [[1, 3, 2]], 'missing GT 2 replaces the lowest non-GT (4)'
    assert sel.select(logits, tokens)['indices'].tolist() == [[1, 3, 4]], 'no labels (inference): no forcing'
    off = small()
    assert off.select(logits, tokens, gt_labels=[torch.tensor([2])])['indices'].tolist() == [[1, 3, 4]]


def test_image_targets_and_parent_mask():
    sel = small()
    h = CategoryHierarchy.from_parent_lists([[], [0], [1], [], [3], []])  # 0 > 1 > 2, 3 > 4
    t, w = sel.image_targets([torch.tensor([2, 2]), torch.tensor([4, 3])], h)
    assert t.tolist() == [[0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0]]
    assert w.tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], 'positive ancestors keep weight 1'
    _, w_plain = sel.image_targets([torch.tensor([2])])
    assert (w_plain == 1).all()


def test_embedding_file_initialises_and_is_checked(tmp_path):
    names = [f'c{i}' for i in range(6)]
    emb = torch.randn(6, 16)
    path = str(tmp_path / 'e.safetensors')
    save_class_embeddings(path, emb, names)
    sel = small(embed_file=path, class_names=names)
    torch.testing.assert_close(sel.category_embed.data, emb)
    with pytest.raises(ValueError, match=r"class 5 is 'c5' in the file but 'x'"):
        small(embed_file=path, class_names=names[:5] + ['x'])
    with pytest.raises(ValueError, match='holds 6 classes, the model has num_classes=7'):
        small(num_classes=7, embed_file=path)
    with pytest.raises(ValueError, match='16-d, embed_dims=8'):
        small(embed_dims=8, num_heads=2, embed_file=path)
    with pytest.raises(ValueError, match='topk=7'):
        small(topk=7)


def test_tree_relation_is_used(tmp_path):
    h = CategoryHierarchy.from_parent_lists([[], [0], [1], [], [3], []])
    from queryvision_mm.models.layers import QVTreeAggregator
    with_tree = small()
    with_tree.relation = QVTreeAggregator(hierarchy=h)
    plain = small()
    x = torch.randn(1, 12, 2, 2)
    assert not torch.allclose(with_tree(x)['logits'], plain(x)['logits'])


# ---------------------------------------------------------------- issue 17: exact, cheaper selector
def _reference(sel, img_feat):
    """The selector written out plainly (one pass over all C categories, the official layer order): the reference
    the chunked / cached implementation must equal."""
    flat = img_feat.flatten(2).transpose(1, 2)
    kv = sel.image_proj(torch.cat([flat.mean(1, keepdim=True), flat], dim=1))
    cats = torch.relu(sel.wordvec_proj(sel.category_embed))
    if sel.relation is not None:
        cats = sel.relation(cats)
    if sel.label_norm is not None:
        cats = sel.label_norm(cats)
    q = cats.unsqueeze(0).expand(img_feat.size(0), -1, -1)
    for layer in sel.layers:
        q = layer.norm1(q + layer.drop(layer.cross_attn(q, kv, kv, need_weights=False)[0]))
        q = layer.norm2(q + layer.ffn(q))
    return sel.scorer(q).squeeze(-1), q


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('train', [False, True])
def test_chunked_selection_equals_one_pass_outputs_and_gradients(train):
    kw = dict(num_classes=50, topk=7, dropout=0.0 if train else 0.1)  # dropout masks depend on the chunking
    ref, chunked = small(chunk_size=None, **kw), small(chunk_size=8, **kw)
    chunked.load_state_dict(ref.state_dict())
    ref.train(train), chunked.train(train)
    x = torch.randn(2, 12, 3, 4)
    with torch.set_grad_enabled(train):
        lg, tok = _reference(ref, x)
        picked = ref.select(lg, tok)
        out = chunked.forward_select(x)
        full = chunked(x)
    torch.testing.assert_close(out['logits'], lg)
    torch.testing.assert_close(full['logits'], lg)
    torch.testing.assert_close(full['tokens'], tok)
    assert out['indices'].tolist() == picked['indices'].tolist()
    torch.testing.assert_close(out['tokens'], picked['tokens'])
    if train:
        (lg.sigmoid().sum() + picked['tokens'].pow(2).sum()).backward()
        (out['logits'].sigmoid().sum() + out['tokens'].pow(2).sum()).backward()
        g_ref, g_new = _grads(ref), _grads(chunked)
        assert g_ref.keys() == g_new.keys() and len(g_ref) == len(list(ref.parameters()))
        for name in g_ref:
            torch.testing.assert_close(g_new[name], g_ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_training_memory_does_not_scale_with_categories_times_ffn_width():
    """What autograd keeps for backward: with chunking + checkpointing only chunk inputs (views of the C x D
    category side) and the K selected tokens; the one-pass selector keeps B x C x FFN activations (several)."""
    sel = small(num_classes=512, ffn_dims=256, chunk_size=64).train()
    saved = []

    def pack(t):
        saved.append(t.untyped_storage().nbytes() if t.device.type == 'cpu' else 0)
        return t

    x = torch.randn(2, 12, 3, 4)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = sel.forward_select(x)
    ffn_activation = 2 * 512 * 256 * 4  # one B x C x FFN fp32 tensor
    assert max(saved) < ffn_activation / 4, max(saved)
    (out['logits'].sum() + out['tokens'].sum()).backward()
    assert sel.layers[0].ffn[0].weight.grad.abs().sum() > 0


def test_category_side_cache_and_invalidation():
    sel = small(num_classes=20, topk=4).eval()
    calls = []
    orig = sel._category_side
    sel._category_side = lambda: calls.append(1) or orig()
    x = torch.randn(1, 12, 2, 2)
    with torch.no_grad():
        first = sel.forward_select(x)
        second = sel.forward_select(x)
    assert len(calls) == 1, 'computed once, then cached'
    torch.testing.assert_close(first['logits'], second['logits'])
    fresh = small(num_classes=20, topk=4, cache_category_side=False).eval()

    def check(what):
        fresh.load_state_dict(sel.state_dict())
        before = len(calls)
        with torch.no_grad():
            got, want = sel.forward_select(x), fresh.forward_select(x)
            sel.forward_select(x)
        assert len(calls) == before + 1, f'recomputed once {what}, then cached'
        torch.testing.assert_close(got['logits'], want['logits'], msg=what)

    # an optimiser step changes the parameters in place (version counter)
    sel.train()
    sel.forward_select(x)['logits'].sum().backward()
    assert sel._cache is None, 'never cached in training'
    sel.eval()
    with torch.no_grad():
        sel.forward_select(x)  # cache filled
    torch.optim.SGD(sel.parameters(), lr=1.0).step()
    check('after an optimiser step')
    with torch.no_grad():
        sel.wordvec_proj.bias.add_(1.0)  # any in-place change of a parameter
    check('after an in-place parameter change')
    other = small(num_classes=20, topk=4)
    sel.load_state_dict(other.state_dict())
    check('after load_state_dict')
    sel.train().eval()
    assert sel._cache is None
    with torch.enable_grad():  # eval mode with gradients: no cache, the graph reaches the parameters
        out = sel.forward_select(x)
    out['logits'].sum().backward()
    assert sel.category_embed.grad is not None and sel._cache is None


def test_official_layer_structure_and_legacy_flags():
    from queryvision_mm.models.layers import QVCategorySelfAttention
    coco = small(relation=dict(type='QVCategorySelfAttention', embed_dims=16, num_heads=2)).eval()
    assert coco.label_norm is None, 'official COCO module: the self-attention block ends with the only LayerNorm'
    assert isinstance(coco.relation, QVCategorySelfAttention)
    with torch.no_grad():
        cats, _ = coco.category_queries()
        torch.testing.assert_close(cats, coco.relation(torch.relu(coco.wordvec_proj(coco.category_embed))))
    assert small().label_norm is not None, 'tree / no relation: label_norm as official'
    legacy = small(relation=dict(type='QVCategorySelfAttention', embed_dims=16, num_heads=2), label_norm=True,
                   ffn_inner_dropout=True)
    assert legacy.label_norm is not None and isinstance(legacy.layers[0].ffn[2], torch.nn.Dropout)
    # no dropout after GELU (BERT's BertIntermediate): in training, the FFN's hidden activations are not zeroed
    layer = small(dropout=0.5).layers[0].train()
    hidden = []
    layer.ffn[3].register_forward_hook(lambda m, i, o: hidden.append(i[0]))
    layer.ffn(torch.randn(4, 16))
    gelu_out = torch.nn.functional.gelu(layer.ffn[0](torch.randn(1, 16)))  # sanity: GELU output is rarely 0
    assert gelu_out.ne(0).all() and hidden[0].ne(0).all(), 'dropout after GELU zeroes hidden units'
    # checkpoints of either structure load into the other (same keys)
    small(ffn_inner_dropout=True).load_state_dict(small().state_dict(), strict=True)


def test_autocast_bf16_on_cpu():
    sel = small(num_classes=40, topk=5, autocast_dtype='bfloat16').eval()
    ref = small(num_classes=40, topk=5).eval()
    ref.load_state_dict(sel.state_dict())
    dtypes = []
    sel.layers[0].ffn[0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    x = torch.randn(2, 12, 3, 4)
    with torch.no_grad():
        out, want = sel.forward_select(x), ref.forward_select(x)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert out['logits'].dtype == out['tokens'].dtype == torch.float32
    torch.testing.assert_close(out['logits'], want['logits'], atol=0.1, rtol=0.05)
    with pytest.raises(ValueError, match='autocast_dtype'):
        small(autocast_dtype='float64')


def test_two_step_shortlist():
    kw = dict(num_classes=30, topk=4, chunk_size=7)
    exact, two = small(**kw).eval(), small(shortlist=30, **kw).eval()
    two.load_state_dict(exact.state_dict())
    x = torch.randn(2, 12, 3, 4)
    with torch.no_grad():
        want, got = exact.forward_select(x), two.forward_select(x)
        assert got['indices'].tolist() == want['indices'].tolist(), 'shortlist = C: exact'
        torch.testing.assert_close(got['tokens'], want['tokens'])
        two.shortlist = 6
        short = two.forward_select(x)
    assert (short['logits'].isfinite().sum(1) == 6).all(), 'only the shortlist gets a second-layer score'
    assert short['indices'].shape == (2, 4) and short['logits'].gather(1, short['indices']).isfinite().all()
    two.train()
    torch.testing.assert_close(two.forward_select(x)['logits'], exact.train().forward_select(x)['logits'],
                               msg='training is always exact')
    with pytest.raises(ValueError, match='shortlist'):
        small(shortlist=2)


def test_forced_gt_through_forward_select():
    sel = small(num_classes=20, topk=3, chunk_size=6, force_gt_in_topk=True).train()
    x = torch.randn(1, 12, 2, 2)
    lg, tok = _reference(sel, x)
    gt = [lg[0].argsort()[:2]]  # the two lowest-scored categories: never selected by score
    want = sel.select(lg, tok, gt)
    got = sel.forward_select(x, gt)
    assert got['indices'].tolist() == want['indices'].tolist()
    torch.testing.assert_close(got['tokens'], want['tokens'])
