"""tools/analysis_tools/selector_shortlist_recall.py (issue 17 item 4): its measures on hand-made selections, and on
a tiny selector the two-step selector with S = C equals the exact one (overlap 1.0, same recall)."""
import os

import pytest
import torch

from conftest import REPO, load_module_from_path

tool = load_module_from_path('qv_selector_shortlist_recall',
                             os.path.join(REPO, 'tools/analysis_tools/selector_shortlist_recall.py'))


def test_measures_on_a_hand_made_case():
    exact = torch.tensor([[0, 1, 2], [3, 4, 5]])
    short = torch.tensor([[2, 1, 7], [5, 4, 3]])
    assert tool.topk_overlap(exact, short).tolist() == pytest.approx([2 / 3, 1.0])
    gts = [torch.tensor([0, 5, 5]), torch.tensor([], dtype=torch.long), torch.tensor([3, 9, 4, 8])]
    recall = tool.gt_recall(torch.tensor([[0, 1, 2], [3, 4, 5], [1, 2, 3]]), gts)
    # image 0: {0, 5} -> 0 selected; image 1: no ground truth (left out); image 2: {3, 4, 8, 9} -> 3 selected
    assert recall == [0.5, None, 0.25]
    assert tool._mean(recall) == pytest.approx(0.375)
    with pytest.raises(ValueError, match='2 selections but 1 ground-truth'):
        tool.gt_recall(exact, gts[:1])


def tiny_selector(num_classes=10, topk=3):
    from queryvision_mm.models.layers import QVCategoryQuerySelector
    torch.manual_seed(0)
    return QVCategoryQuerySelector(num_classes=num_classes, img_in_channels=12, embed_dims=16, kv_dims=8,
                                   num_layers=2, num_heads=2, ffn_dims=32, dropout=0.0, topk=topk, chunk_size=4)


def test_shortlist_of_all_categories_is_the_exact_selector():
    sel = tiny_selector()
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(1, 12, 3, 4, generator=g) for _ in range(6)]
    gts = [torch.randint(0, 10, (n, ), generator=g) for n in (1, 2, 0, 3, 4, 2)]
    res = tool.compare_selectors(sel, feats, gts, [3, 6, 10])
    full = res['shortlists'][10]
    assert full['overlap'] == 1.0
    assert full['recall'] == pytest.approx(res['exact']['recall'])
    assert full['max_logit_diff'] < 1e-5
    # the exact recall agrees with the selector's own recall@K (the metric's definition)
    with torch.no_grad():
        idx = torch.cat([sel.eval().forward_select(x)['indices'] for x in feats])
    assert res['exact']['recall'] == pytest.approx(sel.recall_at_k(idx, gts).item())
    assert res['num_images'] == 6 and res['num_with_gt'] == 5
    for s in (3, 6):
        assert 0.0 <= res['shortlists'][s]['overlap'] <= 1.0 and res['shortlists'][s]['max_logit_diff'] < 1e-5
    assert sel.shortlist is None  # restored
    with pytest.raises(ValueError, match=r'\[2\] outside \[topk=3, num_classes=10\]'):
        tool.compare_selectors(sel, feats, gts, [2])


def test_report_tables():
    res = dict(num_images=2, num_with_gt=2, exact=dict(time_s=0.02, recall=0.75),
               shortlists={6: dict(overlap=0.5, time_s=0.01, max_logit_diff=0.0, recall=0.5)})
    info = dict(config='c.py', checkpoint='x.pth', split='val', num_classes=14, topk=6)
    text = tool.report(res, info, None, {}, 'cmd')
    rows = [ln for ln in text.splitlines() if ln.startswith('| ')]
    assert rows[1] == '| exact | - | 1.000 | 0.750 | 20.0 | 1.00x | - |'
    assert rows[2] == '| two-step | 6 | 0.500 | 0.500 | 10.0 | 2.00x | 0.0e+00 |'
    assert 'Trained demo** (`c.py`' in text and 'V3Det scale' not in text
    missing = tool.report(None, info, None, {}, 'cmd')
    assert 'Trained demo**: missing' in missing and '| exact |' not in missing
