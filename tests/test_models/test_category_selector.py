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
