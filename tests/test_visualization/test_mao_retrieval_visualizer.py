"""QVMaORetrievalVisualizer (mmpretrain UniversalVisualizer, VISUALIZERS registry): the MaO search grid's size, the
query box and matched-object boxes drawn where they are, LeGrad heatmaps overlaid, the picture written to
``out_file`` or handed to mmpretrain / mmengine storage backends (LocalVisBackend, TensorboardVisBackend), and
mmpretrain's ``visualize_image_retrieval`` entry point (ImageRetrievalInferencer) on the same grid."""
import os.path as osp
import uuid

import mmcv
import numpy as np
import pytest
import torch

from mmpretrain.registry import VISUALIZERS
from mmpretrain.structures import DataSample
from mmpretrain.visualization import UniversalVisualizer

DEFAULT_SCOPE = 'mmpretrain'
GRAY = 128


def visualizer(**kw):
    from queryvision_mm.visualization.mao_retrieval_visualizer import QVMaORetrievalVisualizer  # noqa: F401
    return VISUALIZERS.build(dict(type='QVMaORetrievalVisualizer', name=f'test-{uuid.uuid4().hex}', **kw))


def flat(h, w, value=GRAY):
    return np.full((h, w, 3), value, np.uint8)


def is_color(pixels, channel):
    """Some pixel of a row of RGB pixels is clearly green ('g') / red ('r')."""
    c = {'r': 0, 'g': 1}[channel]
    others = [i for i in range(3) if i != c]
    return bool(((pixels[:, c] > 190) & (pixels[:, others].max(axis=1) < 130)).any())


def expected_width(vis, shapes):
    return sum(vis.panel_size(s)[1] for s in shapes) + vis.gap * (len(shapes) - 1)


def test_registered_in_mmpretrain_and_is_a_universal_visualizer():
    from queryvision_mm.visualization.mao_retrieval_visualizer import QVMaORetrievalVisualizer
    assert VISUALIZERS.get('QVMaORetrievalVisualizer') is QVMaORetrievalVisualizer
    assert isinstance(visualizer(), UniversalVisualizer)


def test_grid_size_boxes_and_heatmaps(tmp_path):
    vis = visualizer(panel_height=128, gap=4)
    query = flat(128, 160)                       # height == panel_height: the query panel is not rescaled
    box = [40, 30, 100, 90]
    g1, g2 = flat(64, 64, 90), flat(256, 128, 200)
    heat = np.zeros((32, 32), np.float32)
    heat[:, 16:] = 1.0
    matches = [dict(image=g1, img_path='/g/one.jpg', score=0.91, box=[8, 8, 40, 40], box_score=0.7, heatmap=heat),
               dict(image=g2, img_path='/g/two.jpg', score=0.55)]
    out = str(tmp_path / 'sub' / 'grid.png')
    drawn = vis.visualize_mao_retrieval(query, box, matches, out_file=out)
    assert osp.isfile(out)
    written = mmcv.imread(out, channel_order='rgb')
    shapes = [query.shape, g1.shape, g2.shape]
    assert written.shape == drawn.shape == (128, expected_width(vis, shapes), 3)
    assert np.array_equal(written, drawn)
    # the query box: its edges are drawn (green), the pixels inside it away from the edges untouched
    x0, y0, x1, y1 = box
    assert all(is_color(row, 'g') for row in drawn[y0 + 20:y1 - 20, x0 - 2:x0 + 3].astype(int)), \
        'query box edge not drawn at the box location'
    assert (drawn[y0 + 20:y1 - 20, x0 + 15:x1 - 15] == GRAY).all()
    # match 1 (64 px -> 128 px panel, scale 2): the matched-object box at (16, 16, 80, 80), red; heatmap overlaid
    start = vis.panel_size(query.shape)[1] + vis.gap
    p1 = drawn[:, start:start + 128].astype(int)
    assert all(is_color(row, 'r') for row in p1[50:75, 78:83]), 'matched object box not drawn'
    raw = 90
    assert np.abs(p1[100:120, 100:120] - raw).max() > 30, 'heatmap (hot half) not overlaid'
    left, right = p1[100:120, 2:30].mean(axis=(0, 1)), p1[100:120, 100:126].mean(axis=(0, 1))
    assert not np.allclose(left, right, atol=10), 'cold and hot halves of the heatmap look the same'
    # match 2: no box, no heatmap -> its bottom right (away from the caption) is the raw image
    p2 = drawn[:, start + 128 + vis.gap:]
    assert p2.shape[1] == 64 and (p2[80:, 20:] == 200).all()


def test_backends_receive_the_picture(tmp_path, monkeypatch):
    from mmengine.visualization import LocalVisBackend
    seen = []
    real = LocalVisBackend.add_image

    def spy(self, name, image, step=0):
        seen.append((name, image.shape))
        return real(self, name, image, step)

    monkeypatch.setattr(LocalVisBackend, 'add_image', spy)
    vis = visualizer(vis_backends=[dict(type='LocalVisBackend')], save_dir=str(tmp_path), panel_height=64)
    drawn = vis.visualize_mao_retrieval(flat(64, 64), [10, 10, 40, 40], [dict(image=flat(32, 48), score=0.5)],
                                        name='search_q', step=3)
    assert seen == [('search_q', drawn.shape)]
    png = tmp_path / 'vis_data' / 'vis_image' / 'search_q_3.png'
    assert png.is_file() and mmcv.imread(str(png)).shape == drawn.shape
    # out_file given: mmpretrain's rule -- the file, not the backends
    vis.visualize_mao_retrieval(flat(64, 64), None, [], out_file=str(tmp_path / 'only.png'))
    assert len(seen) == 1 and (tmp_path / 'only.png').is_file()


def test_tensorboard_backend_receives_the_picture(tmp_path, monkeypatch):
    pytest.importorskip('tensorboard')
    from mmengine.visualization import TensorboardVisBackend
    seen = []
    monkeypatch.setattr(TensorboardVisBackend, 'add_image',
                        lambda self, name, image, step=0: seen.append((name, image.shape, step)))
    vis = visualizer(vis_backends=[dict(type='TensorboardVisBackend')], save_dir=str(tmp_path), panel_height=64)
    drawn = vis.visualize_mao_retrieval(flat(64, 64), [10, 10, 40, 40], [dict(image=flat(64, 64), score=0.5)],
                                        name='tb', step=1)
    assert seen == [('tb', drawn.shape, 1)]


def test_mmpretrain_entry_point_and_bad_input(tmp_path):
    """``visualize_image_retrieval`` (what ImageRetrievalInferencer calls): top-k of pred_score from the prototype
    dataset, the query box from the data sample."""
    paths = []
    for i, v in enumerate((30, 220, 90)):
        paths.append(str(tmp_path / f'g{i}.png'))
        mmcv.imwrite(flat(40, 40, v), paths[-1])

    class Gallery:
        def get_data_info(self, i):
            return dict(img_path=paths[i])

    vis = visualizer(panel_height=80)
    sample = DataSample().set_pred_score(torch.tensor([0.1, 0.9, float('-inf')]))
    sample.set_metainfo(dict(query_box=[5, 30, 40, 70]))
    drawn = vis.visualize_image_retrieval(flat(80, 80), sample, Gallery(), topk=3, out_file=str(tmp_path / 'r.png'))
    # two finite scores -> query + 2 panels, the best (g1, value 220) first
    assert drawn.shape == (80, 80 + 2 * (80 + vis.gap), 3)
    assert (drawn[60:, 80 + vis.gap + 40:80 + vis.gap + 80] == 220).all()
    assert all(is_color(row, 'g') for row in drawn[45:60, 2:9].astype(int)), 'query box from data_sample.query_box'
    with pytest.raises(ValueError, match='query box must be'):
        vis.visualize_mao_retrieval(flat(80, 80), [30, 5, 10, 30], [])
    with pytest.raises(ValueError, match='match 1 image must be an HxWx3 uint8'):
        vis.visualize_mao_retrieval(flat(80, 80), None, [dict(image=np.zeros((4, 4)), score=1.0)])
