"""Tiny datasets in the formats the shipped mmpretrain-scope configs read (QKS, MaO).

* ``QVZSLMultiLabelDataset`` (QKS): the OpenMMLab 2.0 JSON that ``tools/dataset_converters/{nuswide,openimages}_to_json
  .py`` write (``OUT_DIR/annotations/{train,val,test}.json`` + ``labels_{seen,unseen}.txt``) with the real label
  counts of the dataset (:data:`QKS_LABEL_SETS`: NUS-WIDE 925 seen / 81 unseen, Open Images 7,186 / 400) and its
  negatives convention; the demo config's data is written by its own generator
  (:func:`queryvision_mm.testing.demo_data.demo_photos.generate_demo_qks`, real photos, 16 / 7 labels).
* ``QVSoIRDataset`` / ``QVSoIRPairDataset`` (MaO): VoxDet-SoIR ``anns.pt`` (``torch.save`` of plain dicts, read back
  with ``weights_only=True``; the official entry layout: query ``bbox`` tuple + RLE ``mask`` + ``ins`` int, gallery
  ``bbox`` list + ``ins`` padded with -1 + ``num_ins``) or the generic SoIR JSON; the MaO demo's data by its own
  generator (:func:`~queryvision_mm.testing.demo_data.demo_photos.generate_demo_soir`). One annotation file may serve several
  sets (``anns.pt``: ``OWID`` for stage A, ``RoboTools`` for evaluation): each set is written once and merged into the
  file. The stage-A ``proposals.json`` is not written here: the rehearsal produces it with ``tools/mao/extract.py``
  (:mod:`.mao_steps`).

Images are random textures with solid rectangles (:func:`.data_det.render`) at ``ctx.img_scale``; the QKS pipelines
resize them to the model's input size."""
import json
import math
import os.path as osp
from typing import Dict, List, Tuple

from . import mao_steps  # noqa: F401  (registers the MaO step plans with the mmpretrain-scope writers)
from .context import RehearsalContext, data_writer
from .data_det import render

# the label sets of the QKS datasets, by the folder the converter writes (the configs' ``data_root``)
QKS_LABEL_SETS: Dict[str, dict] = {
    'nuswide': dict(num_seen=925, num_unseen=81, negatives='complement', dataset='NUS-WIDE'),
    'openimages': dict(num_seen=7186, num_unseen=400, negatives='explicit', dataset='OpenImages-2018_04'),
}
# the QKS demo (configs/qks/demo_photos.py): written by the demo's own generator
QKS_DEMO_ROOTS = ('demo_qks', )
SOIR_DEMO_ROOTS = ('demo_mao', )
SPLITS = ('train', 'val', 'test')


def _prefix(ds_cfg) -> str:
    p = ds_cfg.get('data_prefix') or ''
    if isinstance(p, dict):
        p = p.get('img_path', p.get('img', '')) or ''
    return p


def _join_root(ds_cfg, p: str) -> str:
    root = ds_cfg.get('data_root') or ''
    return p if osp.isabs(p) or not root else osp.join(root, p)


def _qks_layout(ann_file: str) -> Tuple[str, str]:
    """(dataset folder, split) of ``<folder>/annotations/<split>.json`` (the converters' layout)."""
    split = osp.splitext(osp.basename(ann_file))[0]
    ann_dir = osp.dirname(ann_file)
    if osp.basename(ann_dir) != 'annotations' or split not in SPLITS:
        raise ValueError(f'rehearsal: {ann_file!r} is not <data_root>/annotations/{{train,val,test}}.json, the layout '
                         'the QKS converters write')
    return osp.dirname(ann_dir), split


def qks_class_names(label_set: dict) -> Tuple[List[str], List[str]]:
    name = label_set['dataset'].split('-')[0].lower()
    return ([f'{name} seen label {i}' for i in range(label_set['num_seen'])],
            [f'{name} unseen label {i}' for i in range(label_set['num_unseen'])])


def _qks_items(ctx: RehearsalContext, split: str, label_set: dict, image_dir: str, prefix_dir: str) -> List[dict]:
    """``ctx.num_images`` images with 1-3 positives (test: always one unseen, so the ZSL split is not empty);
    ``explicit`` negatives: 1-3 annotated negatives disjoint from the positives (unannotated labels are unknown)."""
    rng = ctx.rng
    n_seen, n_all = label_set['num_seen'], label_set['num_seen'] + label_set['num_unseen']
    items = []
    for i in range(ctx.num_images):
        rel = f'rehearsal_{split}/{i:05d}.jpg'
        path = osp.join(image_dir, rel)
        if ctx.claim(path, 'QVZSLMultiLabelDataset'):
            render(ctx, path, num_classes=1)
        pos = set(rng.choice(n_seen, size=int(rng.integers(1, 3)), replace=False).tolist())
        if split == 'test':
            pos.add(int(rng.integers(n_seen, n_all)))
        item = dict(img_path=osp.relpath(path, prefix_dir) if prefix_dir else path, gt_label=sorted(pos))
        if label_set['negatives'] == 'explicit':
            pool = n_all if split == 'test' else n_seen
            neg = set(rng.choice(pool, size=3, replace=False).tolist()) - pos
            item['gt_negative'] = sorted(neg)
        items.append(item)
    return items


@data_writer('QVZSLMultiLabelDataset')
def write_zsl_multilabel(ds_cfg, ctx: RehearsalContext) -> None:
    ann_file = _join_root(ds_cfg, ds_cfg['ann_file'])
    folder, split = _qks_layout(ann_file)
    ann_path = ctx.path(ann_file)
    key = osp.basename(osp.normpath(folder))
    if key in QKS_DEMO_ROOTS:
        if ctx.claim(ctx.path(osp.join(folder, '.rehearsal_demo')), 'QVZSLMultiLabelDataset'):
            from queryvision_mm.testing.demo_data.demo_photos import PHOTOS, SEEN, generate_demo_qks
            # training images are random crops of the photos with a seen tag: as many as the schedule needs
            photos = sum(any(t in SEEN for t in tags) for *_, tags in PHOTOS)
            crops = max(1, math.ceil(ctx.num_images / photos))
            generate_demo_qks(ctx.path(folder), crops_train=crops, crops_val=1, size=ctx.img_scale, seed=ctx.seed)
        ctx.claim(ann_path, 'QVZSLMultiLabelDataset')
        return
    if key not in QKS_LABEL_SETS:
        raise NotImplementedError(f'rehearsal: unknown QKS dataset folder {folder!r} (known: {sorted(QKS_LABEL_SETS)}'
                                  f' and the demo {QKS_DEMO_ROOTS}); add its label counts to {__name__}')
    if not ctx.claim(ann_path, 'QVZSLMultiLabelDataset'):
        return
    label_set = QKS_LABEL_SETS[key]
    seen, unseen = qks_class_names(label_set)
    prefix = _prefix(ds_cfg)
    prefix_dir = ctx.path(_join_root(ds_cfg, prefix)) if prefix else ctx.root
    items = _qks_items(ctx, split, label_set, prefix_dir, prefix_dir)
    meta = dict(classes=seen + unseen, num_seen=len(seen), negatives=label_set['negatives'],
                dataset=label_set['dataset'])
    with open(ann_path, 'w') as f:
        json.dump(dict(metainfo=meta, data_list=items), f)
    for name, labels in (('labels_seen.txt', seen), ('labels_unseen.txt', unseen)):
        path = ctx.path(osp.join(folder, name))
        if ctx.claim(path, 'QVZSLMultiLabelDataset'):
            with open(path, 'w') as f:
                f.write('\n'.join(labels) + '\n')


def read_qks_metainfo(ctx: RehearsalContext, ds_cfg) -> dict:
    """The metainfo of a QKS annotation file the writer above produced (for the label-embedding stand-in)."""
    with open(ctx.path(_join_root(ds_cfg, ds_cfg['ann_file']))) as f:
        return json.load(f)['metainfo']


# ------------------------------------------------------------------------------------------------------ SoIR (MaO)
def _rle(rng, w: int, h: int) -> dict:
    """An uncompressed COCO RLE dict as in the official anns.pt (``counts`` list, ``size`` tuple)."""
    n = w * h
    a = int(rng.integers(0, n // 2))
    return dict(counts=[a, n // 4, n - a - n // 4], size=(h, w), transpose=False)


def _xyxy(box):
    x, y, w, h = box
    return [x, y, x + w, y + h]


def soir_entries(ctx: RehearsalContext, set_name: str, image_root: str, num_gallery: int, num_instances: int = 3,
                 queries_per_instance: int = 1, official: bool = True) -> Dict[str, Tuple[str, dict]]:
    """{absolute image path: entry} for one set: gallery scenes with 1-3 objects (instance ids ``< num_instances``,
    every instance in some scene) and ``queries_per_instance`` query images per instance, in the VoxDet-SoIR layout
    (``<set>/test/<i>.jpg`` gallery, ``<set>/test_video/<ins>/rgb/<k>.jpg`` queries). ``official``: tuples, RLE
    masks and -1 padding as pihash2k/VoxDet-SoIR ``create_dataset.py`` writes them."""
    rng = ctx.rng
    out = {}
    for i in range(num_gallery):
        path = osp.join(image_root, set_name, 'test', f'{i:05d}.jpg')
        ctx.claim(path, 'QVSoIRDataset')
        w, h, objects = render(ctx, path, num_classes=num_instances)
        ins = [i % num_instances] + [label for label, _ in objects[1:]]
        entry = dict(bbox=[_xyxy(b) for _, b in objects], ins=ins, is_query=False, set=set_name)
        if official:
            entry.update(ins=ins + [-1] * (3 - len(ins)), mask=[], num_ins=[len(ins)])
        out[path] = entry
    for ins in range(num_instances):
        for k in range(queries_per_instance):
            path = osp.join(image_root, set_name, 'test_video', f'{ins:03d}', 'rgb', f'{k}.jpg')
            ctx.claim(path, 'QVSoIRDataset')
            w, h, objects = render(ctx, path, num_classes=1, max_objects=1)
            box = _xyxy(objects[0][1])
            entry = dict(bbox=tuple(box) if official else box, ins=ins, is_query=True, set=set_name)
            if official:
                entry['mask'] = _rle(rng, w, h)
            out[path] = entry
    return out


def _write_soir(ds_cfg, ctx: RehearsalContext, num_gallery: int) -> None:
    ann_file = _join_root(ds_cfg, ds_cfg['ann_file'])
    ann_path = ctx.path(ann_file)
    if osp.basename(osp.dirname(osp.dirname(ann_file))) in SOIR_DEMO_ROOTS:
        if ctx.claim(ann_path, ds_cfg['type']):
            from queryvision_mm.testing.demo_data.demo_photos import generate_demo_soir
            generate_demo_soir(osp.dirname(osp.dirname(ann_path)), seed=ctx.seed)
        return
    if not ann_file.endswith(('.pt', '.pth', '.json')):
        raise NotImplementedError(f'rehearsal: SoIR annotation file {ann_file!r} is neither anns.pt nor JSON')
    official = not ann_file.endswith('.json')
    prefix = _prefix(ds_cfg)
    prefix_dir = ctx.path(_join_root(ds_cfg, prefix)) if prefix else ctx.root
    image_root = prefix_dir if prefix else osp.dirname(ann_path)
    if ds_cfg.get('path_strip'):
        raise NotImplementedError('rehearsal: path_strip is set; the rehearsal writes paths relative to data_prefix')
    sets = list(ds_cfg.get('sets') or ['rehearsal'])
    new = {}
    for s in sets:
        if ctx.claim(f'{ann_path}#{s}', ds_cfg['type']):  # each set once, merged into the one file
            new.update(soir_entries(ctx, s, image_root, num_gallery, official=official))
    if not new:
        return
    ctx.claim(ann_path, ds_cfg['type'])
    data = {}
    if osp.isfile(ann_path):
        from queryvision_mm.datasets import load_soir_annotations
        data = load_soir_annotations(ann_path)
    # keys as the dataset reads them: relative to data_prefix, or to the working directory (the sandbox)
    data.update({osp.relpath(p, prefix_dir): e for p, e in new.items()})
    if official:
        import torch
        torch.save(data, ann_path)
    else:
        with open(ann_path, 'w') as f:
            json.dump(data, f)


@data_writer('QVSoIRDataset', 'QVSoIRRetrievalDataset')
def write_soir(ds_cfg, ctx: RehearsalContext) -> None:
    """An evaluation gallery (extraction; the retriever config's query / gallery splits, the same file): a few
    scenes are enough, every one runs OWLv2 / SAM / stage B."""
    _write_soir(ds_cfg, ctx, num_gallery=min(ctx.num_images, 4))


@data_writer('QVSoIRPairDataset')
def write_soir_pairs(ds_cfg, ctx: RehearsalContext) -> None:
    """Stage-A training scenes (``ctx.num_images``: the schedule's batches) and the query images of their instances.
    ``crop_source='proposals'`` needs ``proposals_file``: written by ``tools/mao/extract.py`` (a rehearsal step)."""
    _write_soir(ds_cfg, ctx, num_gallery=ctx.num_images)
