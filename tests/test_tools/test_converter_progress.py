"""Progress bars of the long dataset converters (issue 16 item 6): Open Images (bytes of the label CSVs, image files
found) and split_coco (files written). The bars go to stderr with ``--progress``, never with ``--no-progress`` nor
by default when stderr is not a terminal (as under pytest / in batch logs), and the outputs are the same either way."""
import csv
import filecmp
import io
import json
import os

from conftest import REPO, load_module_from_path
from test_openimages_converter import make_raw  # the converter's existing tiny 2018_04-style release
from test_split_coco import make_coco

oi = load_module_from_path('qv_openimages_to_json_progress',
                           os.path.join(REPO, 'tools/dataset_converters/openimages_to_json.py'))
sc = load_module_from_path('qv_split_coco_progress', os.path.join(REPO, 'tools/dataset_converters/split_coco.py'))

OI_FILES = ('annotations/train.json', 'annotations/val.json', 'annotations/test.json', 'labels_seen.txt',
            'labels_unseen.txt')


def test_openimages_progress_on_off_and_same_output(tmp_path, capsys):
    raw = tmp_path / 'OpenImages'
    make_raw(raw)
    runs = {}
    for flag in ('--progress', '--no-progress', None):
        out = tmp_path / f'out{flag}'
        assert oi.main([str(raw), str(out), '--val-fraction', '0.34'] + ([flag] if flag else [])) == 0
        captured = capsys.readouterr()
        runs[flag] = (out, captured.out, captured.err)
    err = runs['--progress'][2]
    # one bar per label CSV, in bytes of the file, finished; one count of the image files per split
    for split in ('train', 'test'):
        csv_path = raw / '2018_04' / split / f'{split}-annotations-human-imagelabels.csv'
        size = os.path.getsize(csv_path)
        assert any(f'{split}-annotations-human-imagelabels.csv' in ln and '100%' in ln and f'{size}/{size}' in ln
                   for ln in err.replace('\r', '\n').splitlines()), err
        assert f'images under {raw / split}' in err
    assert '4 files' in err and '2 files' in err  # train: i1..i4, test: t1, t2
    for flag in ('--no-progress', None):  # off, and off by default when stderr is not a terminal
        assert runs[flag][2] == '', runs[flag][2]
    # same statistics on stdout and the same files
    assert runs['--progress'][1] == runs['--no-progress'][1] == runs[None][1]
    assert json.loads(runs['--progress'][1].splitlines()[0])['conflicting_dropped'] == 1
    for rel in OI_FILES:
        assert filecmp.cmp(runs['--progress'][0] / rel, runs['--no-progress'][0] / rel, shallow=False), rel


def test_csv_byte_progress_counts_the_whole_file_and_parses_as_plain_open(tmp_path, capsys):
    """The bytes-read wrapper sees every byte (a file larger than its 1 MiB buffer) and the csv module reads the same
    rows through it as through ``open(newline='')``: quoted fields with commas, embedded newlines, CRLF, non-ASCII."""
    path = tmp_path / 'labels.csv'
    rows = [['ImageID', 'Source', 'LabelName', 'Confidence']]
    rows += [[f'img{i:07d}', 'verification', f'/m/{i % 97:x}', str(i % 2)] for i in range(80000)]
    rows += [['q1', 'a, "quoted" one', '/m/é', '1'], ['q2', 'two\nlines', '/m/ü', '0']]
    buf = io.StringIO(newline='')
    csv.writer(buf, lineterminator='\r\n').writerows(rows)
    path.write_bytes(buf.getvalue().encode('utf-8'))
    size = os.path.getsize(path)
    assert size > 2 * 2**20
    f, bar = oi.open_csv_with_progress(str(path), 'labels', progress=True)
    with f, bar:
        got = list(csv.reader(f))
        assert bar.n == bar.total == size
    assert '100%' in capsys.readouterr().err
    assert f.closed and f.buffer.raw._raw.closed  # the underlying binary file is closed with the text file
    with open(path, encoding='utf-8', newline='') as g:
        assert got == list(csv.reader(g)) == rows


def _coco_file(tmp_path):
    (tmp_path / 'annotations').mkdir()
    with open(tmp_path / 'annotations' / 'instances_train2017.json', 'w') as f:
        json.dump(make_coco(60), f)


def test_split_coco_progress_on_off_and_same_output(tmp_path, capsys):
    _coco_file(tmp_path)
    outs = {}
    for flag in ('--progress', '--no-progress', None):
        out = tmp_path / f'semi{flag}'
        args = ['--data-root', str(tmp_path), '--out-dir', str(out), '--labeled-percent', '10', '50', '--fold', '2']
        assert sc.main(args + ([flag] if flag else [])) == 0
        captured = capsys.readouterr()
        outs[flag] = (out, captured.out, captured.err)
        assert captured.out.count('\n') == 4  # the per-split summaries stay on stdout, one line each
    err = outs['--progress'][2]
    assert 'split_coco' in err and '100%' in err and '8/8' in err  # 2 folds x 2 percentages x 2 files
    assert outs['--no-progress'][2] == '' and outs[None][2] == ''
    names = sorted(p.name for p in outs['--progress'][0].iterdir())
    assert len(names) == 8 and names == sorted(p.name for p in outs['--no-progress'][0].iterdir())
    for name in names:
        assert filecmp.cmp(outs['--progress'][0] / name, outs['--no-progress'][0] / name, shallow=False), name
        assert filecmp.cmp(outs['--progress'][0] / name, outs[None][0] / name, shallow=False), name
