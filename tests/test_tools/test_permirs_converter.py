"""PerMIRS converter: query = the frame with the largest object, two gallery frames per video, small-object videos
dropped, boxes from masks, the object-pickle mask file read safely (a malicious one is refused), errors named."""
import json
import os
import os.path as osp

import numpy as np
import pytest

from conftest import REPO, load_module_from_path

tool = load_module_from_path('qv_permirs_to_soir', osp.join(REPO, 'tools/dataset_converters/permirs_to_soir.py'))


def make_video(root, name, sizes):
    d = root / name
    d.mkdir(parents=True)
    masks = np.empty(3, dtype=object)
    for f, s in enumerate(sizes):
        m = np.zeros((60, 80), dtype=bool)
        m[10:10 + s, 20:20 + s] = True
        masks[f] = {3: m, 9: np.zeros((60, 80), dtype=bool)}
        (d / f'{f}.jpg').write_bytes(b'x')
    np.save(d / 'masks.npz.npy', masks, allow_pickle=True)


def test_conversion(tmp_path):
    make_video(tmp_path, 'b_vid', [20, 30, 25])
    make_video(tmp_path, 'a_vid', [10, 5, 12])
    make_video(tmp_path, 'c_tiny', [20, 2, 20])         # 4 px of a 60x60 crop < 0.5 %: dropped
    anns, dropped = tool.convert(str(tmp_path))
    assert dropped == ['c_tiny']
    queries = {k: v for k, v in anns.items() if v['is_query']}
    assert set(queries) == {'a_vid/2.jpg', 'b_vid/1.jpg'}
    assert queries['b_vid/1.jpg'] == dict(bbox=[20, 10, 50, 40], ins=1, is_query=True, set='PerMiR', obj_name='b_vid')
    assert anns['a_vid/0.jpg'] == dict(bbox=[[20, 10, 30, 20]], ins=[0], is_query=False, set='PerMiR',
                                       obj_name='a_vid')
    from queryvision_mm.datasets import QVSoIRDataset
    (tmp_path / 'anns.json').write_text(json.dumps(anns))
    ds = QVSoIRDataset(str(tmp_path / 'anns.json'), data_prefix=str(tmp_path))
    assert ds.metainfo['num_queries'] == 2 and ds.metainfo['num_gallery'] == 4


def test_unsafe_mask_file_and_errors(tmp_path):
    make_video(tmp_path, 'v', [20, 30, 25])

    class Evil:
        def __reduce__(self):
            return (os.system, ('echo pwned', ))

    evil = np.empty(3, dtype=object)
    evil[0] = Evil()
    np.save(tmp_path / 'v/masks.npz.npy', evil, allow_pickle=True)
    with pytest.raises(ValueError, match=r'masks.npz.npy: cannot read the masks .*refusing to load'):
        tool.convert(str(tmp_path))
    os.remove(tmp_path / 'v/masks.npz.npy')
    with pytest.raises(FileNotFoundError, match='mask file not found'):
        tool.convert(str(tmp_path))
    with pytest.raises(FileNotFoundError, match='no video folders'):
        tool.convert(str(tmp_path / 'v'))
