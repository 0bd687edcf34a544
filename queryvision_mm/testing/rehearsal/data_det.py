"""Tiny detection datasets in the formats the shipped mmdet configs read: COCO JSON (incl. the COCO-Partial
labeled / unlabeled split files, whose unlabeled file has images and no annotations) and V3Det (COCO JSON with
V3Det's category fields, the class-name file ``label_file`` and the official category-tree JSON schema).

Images are random textures with 1-3 solid rectangles, whose boxes are the ground truth. Every category of the config
is listed in the JSON (13,204 for V3Det), only a few appear in the images."""
import json
import os.path as osp
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image

from .context import RehearsalContext, data_writer


def _classes_of(ds_cfg) -> List[str]:
    from mmdet.registry import DATASETS
    meta = ds_cfg.get('metainfo') or {}
    if meta.get('classes'):
        return list(meta['classes'])
    cls = DATASETS.get(ds_cfg['type'])
    classes = (getattr(cls, 'METAINFO', None) or {}).get('classes')
    if not classes:
        raise ValueError(f'rehearsal: cannot tell the classes of dataset {ds_cfg["type"]} (no metainfo.classes)')
    return list(classes)


def render(ctx: RehearsalContext, path: str, num_classes: int, max_objects: int = 3):
    """Write one JPEG at ``path`` and return (width, height, [(label, [x, y, w, h])])."""
    rng = ctx.rng
    s = ctx.img_scale
    h = int(s * rng.uniform(0.95, 1.0))
    w = int(h * 4 / 3)  # the aspect plan.min_short_side assumes
    img = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8) // 4 + 96
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        bw, bh = int(rng.uniform(0.15, 0.5) * w), int(rng.uniform(0.15, 0.5) * h)
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        img[y:y + bh, x:x + bw] = rng.integers(0, 255, size=3)
        objects.append((int(rng.integers(0, num_classes)), [float(x), float(y), float(bw), float(bh)]))
    Image.fromarray(img).save(path, quality=90)
    return w, h, objects


def _image_path(ds_cfg, file_name: str) -> str:
    prefix = (ds_cfg.get('data_prefix') or {}).get('img', '') or ''
    return osp.join(ds_cfg.get('data_root', '') or '', prefix, file_name)


def _ann_path(ds_cfg) -> str:
    ann = ds_cfg['ann_file']
    return ann if osp.isabs(ann) else osp.join(ds_cfg.get('data_root', '') or '', ann)


def write_coco_json(ctx: RehearsalContext, ds_cfg, categories: Sequence[dict], file_names=None,
                    labeled: bool = True) -> str:
    """Images + a COCO JSON at the config's ``ann_file``; ``labeled=False`` writes the unlabeled-split form."""
    ann_path = ctx.path(_ann_path(ds_cfg))
    if not ctx.claim(ann_path, ds_cfg['type']):
        return ann_path
    images, annotations = [], []
    tag = osp.splitext(osp.basename(ann_path))[0]
    for i in range(ctx.num_images):
        file_name = file_names(i) if file_names else f'{tag}_{i:04d}.jpg'
        img_path = ctx.path(_image_path(ds_cfg, file_name))
        ctx.claim(img_path, ds_cfg['type'])
        img_id = len(ctx.written) * 1000 + i + 1  # unique across the splits of one rehearsal
        w, h, objects = render(ctx, img_path, len(categories))
        images.append(dict(id=img_id, file_name=file_name, width=w, height=h))
        if labeled:
            for label, box in objects:
                annotations.append(dict(id=img_id * 10 + len(annotations) % 10, image_id=img_id,
                                        category_id=categories[label]['id'], bbox=box, area=box[2] * box[3],
                                        iscrowd=0))
    for k, a in enumerate(annotations):
        a['id'] = k + 1
    with open(ann_path, 'w') as f:
        json.dump(dict(images=images, annotations=annotations, categories=list(categories)), f)
    return ann_path


@data_writer('CocoDataset')
def write_coco(ds_cfg, ctx: RehearsalContext) -> None:
    classes = _classes_of(ds_cfg)
    categories = [dict(id=i + 1, name=c, supercategory='none') for i, c in enumerate(classes)]
    ctx.extra.setdefault('class_names', classes)
    # COCO-Partial unlabeled files (and COCO's unlabeled2017) carry no annotations
    labeled = 'unlabeled' not in osp.basename(ds_cfg['ann_file'])
    write_coco_json(ctx, ds_cfg, categories, labeled=labeled)


def v3det_tree(num_classes: int, fanout: int = 32) -> Dict:
    """A category tree in the official V3Det JSON schema: non-category nodes ``entity`` -> ``object`` above
    category 0, and category i > 0 a child of category (i - 1) // fanout, so categories are internal nodes with
    images of their own as in V3Det (depth ~ log_fanout(C); WordNet-style node ids)."""
    root, obj = 'n00000000', 'n00000001'
    cat_nodes = [f'n2{c:07d}' for c in range(num_classes)]
    father2child: Dict[str, List[str]] = {root: [obj], obj: [cat_nodes[0]]}
    for i in range(1, num_classes):
        father2child.setdefault(cat_nodes[(i - 1) // fanout], []).append(cat_nodes[i])
    child2father = {c: [p] for p, cs in father2child.items() for c in cs}

    def ancestors(n: str) -> List[str]:
        out = []
        while n in child2father:
            n = child2father[n][0]
            out.append(n)
        return out

    desc2anc = {n: ancestors(n) for n in [obj] + cat_nodes}
    anc2desc: Dict[str, List[str]] = {}
    for d, ancs in desc2anc.items():
        for a in ancs:
            anc2desc.setdefault(a, []).append(d)
    names = {root: 'entity', obj: 'object', **{c: f'category {i}' for i, c in enumerate(cat_nodes)}}
    return dict(categoryid2treeid={str(i + 1): n for i, n in enumerate(cat_nodes)}, id2name=names,
                id2desc=dict(names), father2child=father2child, child2father=child2father,
                ancestor2descendant=anc2desc, descendant2ancestor=desc2anc)


@data_writer('V3DetDataset')
def write_v3det(ds_cfg, ctx: RehearsalContext) -> None:
    import inspect

    from mmdet.registry import DATASETS
    label_file = ds_cfg.get('label_file') or inspect.signature(
        DATASETS.get('V3DetDataset').__init__).parameters['label_file'].default
    data_root = ds_cfg.get('data_root', '') or ''
    num_classes = int(ctx.extra.get('num_classes', 13204))
    label_path = ctx.path(osp.join(data_root, label_file))
    if ctx.claim(label_path, 'V3DetDataset'):
        with open(label_path, 'w') as f:
            f.write('\n'.join(f'category {i}' for i in range(num_classes)) + '\n')
    with open(label_path) as f:
        classes = [line.strip() for line in f if line.strip()]
    ctx.extra.setdefault('class_names', classes)
    categories = [dict(id=i + 1, name=c, name_zh='', cat_info=c, novel=False, exemplar_image='')
                  for i, c in enumerate(classes)]
    # V3Det groups images by category: file names Images/<tree node>/<file>.jpg
    tag = osp.splitext(osp.basename(ds_cfg['ann_file']))[0]
    write_coco_json(ctx, ds_cfg, categories, file_names=lambda i: f'Images/n2{i % 7:07d}/{tag}_{i:04d}.jpg')


def write_v3det_tree(ctx: RehearsalContext, tree_file: str, num_classes: int) -> None:
    path = ctx.path(tree_file)
    if ctx.claim(path, 'category tree'):
        with open(path, 'w') as f:
            json.dump(v3det_tree(num_classes), f)
