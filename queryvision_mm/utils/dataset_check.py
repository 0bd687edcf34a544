"""Pre-flight check of a config's datasets (``tools/misc/check_dataset.py``): every image opened, every annotation
compared with its image, before a long run finds a bad file on its own.

Generic over the datasets of our configs: dataset wrappers (``ConcatDataset`` of labeled + unlabeled sets,
``RepeatDataset``, ...) are walked down to their ``BaseDataset`` leaves, whose ``get_data_info`` items give
``img_path`` and, where the format has them, ``img_id``, ``width`` / ``height`` and boxes (mmdet ``instances[*].bbox``,
SoIR ``query_box`` / ``gt_boxes``; all ``[x1, y1, x2, y2]``).
"""
import io
from collections import Counter
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

BOX_TOLERANCE = 1.0  # pixels a box may extend past the image (rounding in COCO-style files)
PROBLEM_KINDS = ('build', 'missing', 'empty', 'unreadable', 'size_mismatch', 'bbox_outside', 'bbox_nonpositive',
                 'duplicate_id', 'duplicate_path', 'unknown_image')


def leaf_datasets(dataset) -> List:
    """The datasets holding data items (``BaseDataset``s) under any wrappers (a ``datasets`` list: ConcatDataset; a
    ``dataset``: RepeatDataset, ClassBalancedDataset, MultiImageMixDataset, ...), in order, each once."""
    from mmengine.dataset import BaseDataset
    out = []

    def walk(ds):
        if isinstance(ds, BaseDataset):
            if all(ds is not o for o in out):
                out.append(ds)
        elif hasattr(ds, 'datasets'):
            for sub in ds.datasets:
                walk(sub)
        elif hasattr(ds, 'dataset'):
            walk(ds.dataset)
        else:
            raise TypeError(f'cannot find the data items of a {type(ds).__name__} (neither a BaseDataset nor a '
                            'wrapper with .dataset / .datasets)')

    walk(dataset)
    return out


def _boxes(info: dict) -> List[Sequence[float]]:
    boxes = [ins['bbox'] for ins in info.get('instances', []) if isinstance(ins, dict) and 'bbox' in ins]
    if info.get('query_box') is not None:
        boxes.append(info['query_box'])
    boxes.extend(info.get('gt_boxes') or [])
    return [b for b in boxes if b is not None and len(b) == 4]


def dataset_records(dataset) -> Iterator[dict]:
    """One record per data item: ``path``, ``id`` (``img_id`` if any), ``size`` (annotated ``(w, h)`` or None),
    ``boxes``."""
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        size = (info['width'], info['height']) if 'width' in info and 'height' in info else None
        yield dict(path=info['img_path'], id=info.get('img_id'), size=size, boxes=_boxes(info))


def coco_file_problems(ann_file: str, backend_args: Optional[dict] = None) -> List[dict]:
    """Problems of a COCO-style annotation file that its parsed data list no longer shows (pycocotools indexes
    images by id, keeping the last of duplicates; mmdet drops boxes without area): duplicated image or annotation
    ids, annotations of unknown images, boxes of non-positive size. Other files: no problems."""
    from mmengine.fileio import load
    data = load(ann_file, backend_args=backend_args) if str(ann_file).endswith('.json') else None
    if not isinstance(data, dict) or not isinstance(data.get('images'), list) or 'annotations' not in data:
        return []
    problems = []
    names = {}
    for img in data['images']:
        names.setdefault(img.get('id'), []).append(img.get('file_name'))
    for img_id, files in names.items():
        if len(files) > 1:
            problems.append(dict(kind='duplicate_id', path=ann_file,
                                 detail=f'image id {img_id} used by {len(files)} images ({", ".join(files[:3])})'))
    for ann_id, n in Counter(a.get('id') for a in data['annotations']).items():
        if n > 1:
            problems.append(dict(kind='duplicate_id', path=ann_file, detail=f'annotation id {ann_id} used {n} times'))
    for ann in data['annotations']:
        img = names.get(ann.get('image_id'))
        where = f'annotation {ann.get("id")} of {img[0] if img else "image " + str(ann.get("image_id"))}'
        if img is None:
            problems.append(dict(kind='unknown_image', path=ann_file, detail=f'{where}: no such image id'))
        box = ann.get('bbox')
        if box is not None and (len(box) != 4 or box[2] <= 0 or box[3] <= 0):
            problems.append(dict(kind='bbox_nonpositive', path=ann_file, detail=f'{where}: bbox {box} (x, y, w, h)'))
    return problems


def inspect_image(task: Tuple[str, Optional[dict]]) -> dict:
    """Read and decode one image as the training pipeline would (mmengine's file backends, mmcv's default ``cv2``
    decoder with EXIF orientation applied), and decode it fully with Pillow as well, which also catches truncated
    files that ``cv2`` decodes partially without an error. Runs in worker processes.

    Returns ``dict(path, kind, detail, size)``: ``kind`` None (readable; ``size`` = decoded ``(w, h)``) or one of
    ``missing``, ``empty``, ``unreadable``.
    """
    import mmcv
    from mmengine import fileio
    from PIL import Image

    path, backend_args = task
    out = dict(path=path, kind=None, detail='', size=None)
    try:
        if not fileio.exists(path, backend_args=backend_args):
            return dict(out, kind='missing', detail='no such file')
        content = fileio.get(path, backend_args=backend_args)
    except Exception as e:  # storage backend errors
        return dict(out, kind='unreadable', detail=f'read failed: {type(e).__name__}: {e}')
    if len(content) == 0:
        return dict(out, kind='empty', detail='0 bytes')
    try:
        img = mmcv.imfrombytes(content, flag='color', backend='cv2')
    except Exception as e:
        img, err = None, f'{type(e).__name__}: {e}'
    else:
        err = 'cv2 could not decode it'
    if img is None:
        return dict(out, kind='unreadable', detail=err)
    try:
        with Image.open(io.BytesIO(content)) as im:
            im.load()
            orientation = im.getexif().get(0x0112, 1)
    except Exception as e:
        return dict(out, kind='unreadable', detail=f'corrupt ({type(e).__name__}: {e}); cv2 decodes it partially')
    detail = f'EXIF orientation {orientation}: the loader rotates it' if orientation in (5, 6, 7, 8) else ''
    return dict(out, size=(int(img.shape[1]), int(img.shape[0])), detail=detail)


def check_records(records: Sequence[dict], images: Dict[str, dict]) -> List[dict]:
    """Annotation problems of one leaf dataset given the inspected ``images`` (path -> :func:`inspect_image`):
    unreadable files, annotated size differing from the decoded one, boxes outside the image or of non-positive
    size, duplicated image ids and image paths."""
    problems = []
    for path, n in Counter(r['path'] for r in records).items():
        if n > 1:
            problems.append(dict(kind='duplicate_path', path=path, detail=f'listed {n} times'))
    for img_id, n in Counter(r['id'] for r in records if r['id'] is not None).items():
        if n > 1:
            paths = sorted({r['path'] for r in records if r['id'] == img_id})
            problems.append(dict(kind='duplicate_id', path=paths[0],
                                 detail=f'img_id {img_id} used {n} times ({", ".join(paths[:3])})'))
    reported = set()
    for rec in records:
        path, img = rec['path'], images[rec['path']]
        if img['kind'] is not None:
            if path not in reported:
                reported.add(path)
                problems.append(dict(kind=img['kind'], path=path, detail=img['detail']))
            continue
        w, h = img['size']
        if rec['size'] is not None and tuple(rec['size']) != (w, h):
            detail = f'annotation {rec["size"][0]}x{rec["size"][1]}, decoded {w}x{h}'
            problems.append(dict(kind='size_mismatch', path=path, detail=detail + (f' ({img["detail"]})'
                                                                                   if img['detail'] else '')))
        for box in rec['boxes']:
            x1, y1, x2, y2 = (float(v) for v in box)
            if x2 <= x1 or y2 <= y1:
                problems.append(dict(kind='bbox_nonpositive', path=path, detail=f'box {list(box)}'))
            elif x1 < -BOX_TOLERANCE or y1 < -BOX_TOLERANCE or x2 > w + BOX_TOLERANCE or y2 > h + BOX_TOLERANCE:
                problems.append(dict(kind='bbox_outside', path=path, detail=f'box {list(box)} in a {w}x{h} image'))
    return problems


def inspect_images(tasks: List[Tuple[str, Optional[dict]]], workers: int = 0) -> List[dict]:
    """:func:`inspect_image` over ``tasks`` with mmengine's progress bar, in ``workers`` processes if > 1."""
    from mmengine.utils import track_iter_progress, track_parallel_progress
    if not tasks:
        return []
    if workers > 1:
        return track_parallel_progress(inspect_image, tasks, workers, chunksize=16)
    return [inspect_image(t) for t in track_iter_progress(tasks)]
