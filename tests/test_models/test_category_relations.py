"""CQ-DINO category relations: V3Det tree parsing (integer labels end to end), tree aggregation, self-attention."""
import copy
import json
import math

import pytest
import torch

from queryvision_mm.datasets import CategoryHierarchy, HierarchyError
from queryvision_mm.datasets.category_hierarchy import HierarchyWarning
from queryvision_mm.models.layers import QVCategorySelfAttention, QVTreeAggregator

# root n0 (entity, not a category) -> animal n1, pet n6; animal -> mammal n2 (not a category) -> dog n3, cat n4;
# dog -> puppy n5; pet -> dog (dog has two parents). dog and pet share the name "battery" on purpose.
TREE = dict(
    categoryid2treeid={'10': 'n1', '11': 'n3', '12': 'n4', '13': 'n5', '14': 'n6'},
    father2child={'n0': ['n1', 'n6'], 'n1': ['n2'], 'n2': ['n3', 'n4'], 'n3': ['n5'], 'n6': ['n3']},
    id2name={'n0': 'entity', 'n1': 'animal', 'n2': 'mammal', 'n3': 'battery', 'n4': 'cat', 'n5': 'puppy',
             'n6': 'battery'},
)
IDS = [10, 11, 12, 13, 14]  # labels: 0 animal, 1 dog, 2 cat, 3 puppy, 4 pet


def write(tmp_path, tree, name='tree.json'):
    path = tmp_path / name
    path.write_text(json.dumps(tree))
    return str(path)


def test_v3det_tree_to_label_relations(tmp_path):
    h = CategoryHierarchy.from_v3det_tree(write(tmp_path, TREE), IDS)
    assert h.parents == [[], [0, 4], [0], [1], []], 'non-category nodes are walked through; dog has two parents'
    assert h.children == [[1, 2], [3], [], [], [1]]
    assert h.ancestors[3] == [0, 1, 4]
    assert h.level == [0, 1, 1, 2, 0]
    assert h.num_descendants == [3, 1, 0, 0, 2]
    assert h.extra['root'] == h.root == 'n0' and h.roots == ['n0'] and h.unreachable == []
    # same (cleaned) name, different ids -> different labels with different relations
    assert h.parents[1] != h.parents[4]
    # label order follows the dataset's ids, not the file
    h2 = CategoryHierarchy.from_v3det_tree(write(tmp_path, TREE), [14, 13, 12, 11, 10])
    assert h2.parents[3] == [0, 4]  # dog (label 3 now) under pet (0) and animal (4)


TWO_ROOTS = (lambda t: (t['categoryid2treeid'].__setitem__('12', 'n7'), t['id2name'].__setitem__('n7', 'x'),
                       t['father2child'].__setitem__('n8', ['n7']), t['id2name'].__setitem__('n8', 'y')))


@pytest.mark.parametrize('break_it,match', [
    (lambda t: t['father2child'].__setitem__('n5', ['n1']), 'cycle'),
    (lambda t: t['father2child']['n2'].append('n9'), "child 'n9'.*not in id2name"),
    (lambda t: t['categoryid2treeid'].pop('12'), 'category id 12 .label 2. is not in categoryid2treeid'),
    (lambda t: t['categoryid2treeid'].__setitem__('12', 'n3'), 'map to the same tree node'),
    (lambda t: t.pop('father2child'), "missing key 'father2child'"),
    (TWO_ROOTS, 'expected one root'),
])
def test_bad_trees_fail_naming_the_file(tmp_path, break_it, match):
    tree = copy.deepcopy(TREE)
    break_it(tree)
    path = write(tmp_path, tree)
    with pytest.raises(HierarchyError, match=match) as err:
        CategoryHierarchy.from_v3det_tree(path, IDS, strict=True)
    assert path in str(err.value)


def test_orphan_category_is_reported_not_fatal_and_root_exposed(tmp_path):
    """V3Det's own issues report nodes outside the tree: by default an unreachable category is kept (no relations),
    listed in ``unreachable`` and counted in a warning; ``strict=True`` keeps the old error."""
    tree = copy.deepcopy(TREE)
    tree['categoryid2treeid']['12'] = 'n7'  # cat becomes a node with no parent and no child
    tree['id2name']['n7'] = 'cat'
    tree['father2child']['n7'] = []
    path = write(tmp_path, tree)
    with pytest.warns(HierarchyWarning, match=r'1 of 5 categories are not reachable from the root .n0. \(id 12 '
                      r'\(label 2, node .n7.\); 1 unreachable tree node.s. in all') as rec:
        h = CategoryHierarchy.from_v3det_tree(path, IDS)
    assert path in str(rec[0].message)
    assert h.root == 'n0' and h.roots == ['n0'] and h.unreachable == [2] and h.num_unreachable_nodes == 1
    assert h.parents == [[], [0, 4], [], [1], []] and h.children == [[1], [3], [], [], [1]], 'cat: no relations'
    QVTreeAggregator(tree_file=path, category_ids=IDS)  # the aggregator accepts it too
    with pytest.raises(HierarchyError, match=r'label 2, node .n7.. is an orphan.*1 such categor'):
        CategoryHierarchy.from_v3det_tree(path, IDS, strict=True)
    with pytest.raises(HierarchyError, match='is an orphan'):
        QVTreeAggregator(tree_file=path, category_ids=IDS, strict=True)
    with pytest.raises(HierarchyError, match="root 'nX' is not a node"):
        CategoryHierarchy.from_v3det_tree(path, IDS, root='nX')
    with pytest.raises(FileNotFoundError, match='missing.json'):
        CategoryHierarchy.from_v3det_tree(str(tmp_path / 'missing.json'), IDS)


def test_parent_lists_errors():
    with pytest.raises(HierarchyError, match='unknown parent label 7'):
        CategoryHierarchy.from_parent_lists([[], [7]])
    with pytest.raises(HierarchyError, match='cycle'):
        CategoryHierarchy.from_parent_lists([[2], [0], [1]])
    h = CategoryHierarchy.from_parent_lists([[], [0], [1]])
    assert h.level == [0, 1, 2] and h.num_descendants == [2, 1, 0]


def test_tree_aggregation_hand_computed(tmp_path):
    h = CategoryHierarchy.from_v3det_tree(write(tmp_path, TREE), IDS)
    agg = QVTreeAggregator(hierarchy=h, num_classes=5)
    f = torch.randn(5, 8, dtype=torch.float64)
    w = lambda n: 0.4 + 0.4 * math.log(2 + n) / math.log(2 + 13204)  # noqa: E731
    ref = f.clone()
    ref[1] = (1 - w(1)) * f[1] + w(1) * f[3]  # dog <- puppy (level 1 first)
    ref[0] = (1 - w(3)) * f[0] + w(3) * (ref[1] + f[2]) / 2  # animal <- updated dog, cat
    ref[4] = (1 - w(2)) * f[4] + w(2) * ref[1]  # pet <- updated dog
    out = agg(f)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(agg(f[None].expand(3, -1, -1)), ref[None].expand(3, -1, -1)), 'batched'
    # same result through the tree-file path, with gradients to every input row
    agg2 = QVTreeAggregator(tree_file=write(tmp_path, TREE), category_ids=IDS)
    x = f.clone().requires_grad_()
    agg2(x).sum().backward()
    assert (x.grad.abs().sum(-1) > 0).all()
    with pytest.raises(ValueError, match='has 5 categories, the model 6'):
        QVTreeAggregator(hierarchy=h, num_classes=6)
    with pytest.raises(ValueError, match='expected 5 categories'):
        agg(torch.randn(4, 8))


def test_max_level_merges_deep_levels():
    h = CategoryHierarchy.from_parent_lists([[], [0], [1], [2]])  # chain of 4
    f = torch.randn(4, 3, dtype=torch.float64)
    merged = QVTreeAggregator(hierarchy=h, max_level=1)
    w = merged.weight
    ref = f.clone()
    # levels 1, 2, 3 merged: parents 1 and 2 use the pre-update child values, then level 0
    ref[1] = (1 - w(2)) * f[1] + w(2) * f[2]
    ref[2] = (1 - w(1)) * f[2] + w(1) * f[3]
    ref[0] = (1 - w(3)) * f[0] + w(3) * ref[1]
    torch.testing.assert_close(merged(f), ref)


def test_category_self_attention_is_real_attention():
    torch.manual_seed(0)
    sa = QVCategorySelfAttention(embed_dims=16, num_heads=4).eval()
    x = torch.randn(2, 6, 16)
    y = x.clone()
    y[:, 5] += 1.0  # change one category
    out_x, out_y = sa(x), sa(y)
    assert not torch.allclose(out_x[:, 0], out_y[:, 0]), 'categories see each other'
    legacy = QVCategorySelfAttention(embed_dims=16, num_heads=4, degenerate_compat=True).eval()
    legacy.load_state_dict(sa.state_dict())
    lx, ly = legacy(x), legacy(y)
    torch.testing.assert_close(lx[:, :5], ly[:, :5])  # the official module: each category only sees itself
    v = torch.nn.functional.linear(x, sa.attn.in_proj_weight[32:], sa.attn.in_proj_bias[32:])
    torch.testing.assert_close(lx, sa.norm(x + sa.attn.out_proj(v)), rtol=1e-5, atol=1e-5)
    assert sa(x[0]).shape == (6, 16)


def test_several_top_level_nodes_expose_all_roots(tmp_path):
    """A second tree (n8 -> cat) next to the main one: the root is the top-level node that reaches the most
    categories, ``roots`` lists both, the other tree's categories are counted as unreachable; ``root=`` chooses."""
    tree = copy.deepcopy(TREE)
    TWO_ROOTS(tree)
    path = write(tmp_path, tree)
    with pytest.warns(HierarchyWarning, match='1 of 5 categories .* 2 top-level node'):
        h = CategoryHierarchy.from_v3det_tree(path, IDS)
    assert h.root == 'n0' and h.roots == ['n0', 'n8'] and h.unreachable == [2]
    with pytest.warns(HierarchyWarning, match='4 of 5 categories are not reachable from the root .n8.'):
        h8 = CategoryHierarchy.from_v3det_tree(path, IDS, root='n8')
    assert h8.root == 'n8' and h8.unreachable == [0, 1, 3, 4]
    assert h8.parents == h.parents, 'relations do not depend on the root'
