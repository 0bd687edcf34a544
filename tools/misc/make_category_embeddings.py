#!/usr/bin/env python
"""Class-name text embeddings with open_clip, saved as safetensors with the class list (and ids) in the metadata.

    python tools/misc/make_category_embeddings.py CLASSES [CLASSES ...] OUT.safetensors --model MODEL
        [--pretrained WEIGHTS] [--templates single|ensemble|qks_pool|scene|FILE] [--normalize-each]
        [--normalize-mean] [--batch-size 256] [--device cpu]

QKS: ``... data/nuswide/labels_seen.txt data/nuswide/labels_unseen.txt OUT --templates qks_pool`` (85-template
prompt pool, unnormalised mean, seen labels first); its zero-shot CLIP baseline: ``--templates scene``.

CLASSES: a text file with one class name per line (e.g. V3Det's ``category_name_13204_v3det_2023_v1.txt``, label
order = line order) or a COCO-format JSON (categories in id order, as mmdet's CocoDataset/V3DetDataset labels; the
ids are stored too, so files can be checked by id when names collide). MODEL: an open_clip ``local-dir:/folder``
or a built-in name with ``--pretrained`` a local weights file; nothing is downloaded. The file is written and then
read back and checked against CLASSES. Used to initialise CQ-DINO's category queries (and QKS's label embeddings).
"""
import argparse
import json
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

TEMPLATE_SETS = {
    'single': ['a photo of a {}.'],
    # a 79-prompt ensemble in the style of CLIP's ImageNet prompt templates
    'ensemble': [
        'a bad photo of a {}.', 'a photo of many {}.', 'a sculpture of a {}.', 'a photo of the hard to see {}.',
        'a low resolution photo of the {}.', 'a rendering of a {}.', 'graffiti of a {}.', 'a bad photo of the {}.',
        'a cropped photo of the {}.', 'a tattoo of a {}.', 'the embroidered {}.', 'a photo of a hard to see {}.',
        'a bright photo of a {}.', 'a photo of a clean {}.', 'a photo of a dirty {}.', 'a dark photo of the {}.',
        'a drawing of a {}.', 'a photo of my {}.', 'the plastic {}.', 'a photo of the cool {}.',
        'a close-up photo of a {}.', 'a black and white photo of the {}.', 'a painting of the {}.',
        'a pixelated photo of the {}.', 'a sculpture of the {}.', 'a bright photo of the {}.',
        'a cropped photo of a {}.', 'a plastic {}.', 'a photo of the dirty {}.', 'a jpeg corrupted photo of a {}.',
        'a blurry photo of the {}.', 'a photo of the {}.', 'a good photo of the {}.', 'a rendering of the {}.',
        'a {} in a video game.', 'a photo of one {}.', 'a doodle of a {}.', 'a close-up photo of the {}.',
        'a photo of a {}.', 'the origami {}.', 'the {} in a video game.', 'a sketch of a {}.',
        'a doodle of the {}.', 'a origami {}.', 'a low resolution photo of a {}.', 'the toy {}.',
        'a rendition of the {}.', 'a photo of the clean {}.', 'a photo of a large {}.', 'a rendition of a {}.',
        'a photo of a nice {}.', 'a photo of a weird {}.', 'a blurry photo of a {}.', 'a cartoon {}.',
        'art of a {}.', 'a sketch of the {}.', 'a embroidered {}.', 'a pixelated photo of a {}.',
        'itap of the {}.', 'a jpeg corrupted photo of the {}.', 'a good photo of a {}.', 'a plushie {}.',
        'a photo of the nice {}.', 'a photo of the small {}.', 'a photo of the weird {}.', 'the cartoon {}.',
        'art of the {}.', 'a drawing of the {}.', 'a photo of the large {}.', 'a black and white photo of a {}.',
        'the plushie {}.', 'a dark photo of a {}.', 'itap of a {}.', 'graffiti of the {}.', 'a toy {}.',
        'itap of my {}.', 'a photo of a cool {}.', 'a photo of a small {}.', 'a tattoo of the {}.',
    ],
}


def _qks_pool():
    """QKS's prompt pool: CLIP's 80 ImageNet templates (as shipped by open_clip) + 5 scene templates."""
    from open_clip import OPENAI_IMAGENET_TEMPLATES  # public export of open_clip
    return [t('{}') for t in OPENAI_IMAGENET_TEMPLATES] + [
        'there is a {} in the scene.', 'there is the {} in the scene.', 'this is a {} in the scene.',
        'this is the {} in the scene.', 'this is one {} in the scene.']


LAZY_TEMPLATE_SETS = {
    'qks_pool': _qks_pool,  # QKS label embeddings (85 templates, unnormalised mean)
    'scene': lambda: ['There is a {} in the scene'],  # the MKT / QKS zero-shot CLIP baseline
}


def read_classes_files(paths):
    """Concatenate several class lists (e.g. seen then unseen labels) into one (names, ids or None)."""
    names, ids = [], []
    for path in paths:
        n, i = read_classes(path)
        names += n
        ids = None if (ids is None or i is None) else ids + i
    return names, ids  # repeated names are legitimate (V3Det's cleaned-name collisions): rows are kept by position


def read_classes(path):
    """(names, ids or None) from a text file (one name per line) or a COCO-format JSON (categories by id)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'class list not found: {path}')
    if path.endswith('.json'):
        with open(path) as f:
            data = json.load(f)
        cats = data.get('categories') if isinstance(data, dict) else None
        if not cats:
            raise ValueError(f'{path}: no "categories" list (expected a COCO-format annotation file)')
        for i, c in enumerate(cats):
            if 'id' not in c or 'name' not in c:
                raise ValueError(f'{path}: categories[{i}] needs "id" and "name", got {sorted(c)}')
        cats = sorted(cats, key=lambda c: c['id'])
        ids = [int(c['id']) for c in cats]
        if len(set(ids)) != len(ids):
            raise ValueError(f'{path}: duplicate category ids')
        return [c['name'] for c in cats], ids
    with open(path, encoding='utf-8') as f:
        names = [line.rstrip('\n').rstrip('\r') for line in f]
    while names and not names[-1].strip():
        names.pop()
    for i, n in enumerate(names):
        if not n.strip():
            raise ValueError(f'{path}: line {i + 1} is empty (one class name per line; label = line number - 1)')
    return names, None


def read_templates(spec):
    if spec in TEMPLATE_SETS:
        return TEMPLATE_SETS[spec]
    if spec in LAZY_TEMPLATE_SETS:
        return LAZY_TEMPLATE_SETS[spec]()
    if not osp.isfile(spec):
        raise FileNotFoundError(f'--templates: {spec!r} is neither a preset '
                                f'{sorted(TEMPLATE_SETS) + sorted(LAZY_TEMPLATE_SETS)} nor a file')
    with open(spec, encoding='utf-8') as f:
        return [line.rstrip('\n') for line in f if line.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('classes', nargs='+', help='class list(s): txt (one name per line) or COCO json; several files '
                   'are concatenated in order (QKS: seen labels, then unseen labels); the last argument is OUT')
    p.add_argument('--model', required=True, help='open_clip "local-dir:/folder" or a built-in name')
    p.add_argument('--pretrained', default=None, help='local weights file for a built-in model name')
    p.add_argument('--templates', default='single',
                   help=f'preset {sorted(TEMPLATE_SETS) + sorted(LAZY_TEMPLATE_SETS)} or a file, one per line')
    p.add_argument('--normalize-each', action='store_true', help='L2-normalise each prompt before averaging')
    p.add_argument('--normalize-mean', action='store_true', help='L2-normalise the averaged embedding')
    p.add_argument('--batch-size', type=int, default=256)
    p.add_argument('--device', default='cpu')
    p.add_argument('--allow-random-weights', action='store_true',
                   help='permit a built-in model name without --pretrained (random weights; tests only)')
    args = p.parse_args(argv)
    if len(args.classes) < 2:
        p.error('give at least one class list and the output file')
    args.classes, args.out = args.classes[:-1], args.classes[-1]
    return args


def main(argv=None):
    args = parse_args(argv)
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    from queryvision_mm.utils.open_clip_loader import load_open_clip
    from queryvision_mm.utils.text_embeddings import (encode_class_names, load_class_embeddings,
                                                      save_class_embeddings, templates_digest)
    names, ids = read_classes_files(args.classes)
    templates = read_templates(args.templates)
    if not args.model.startswith('local-dir:') and args.pretrained is None and not args.allow_random_weights:
        sys.exit(f'--model {args.model} without --pretrained would use random weights; pass a local weights file '
                 '(or --allow-random-weights for a test)')
    model, _, tokenizer = load_open_clip(args.model, pretrained=args.pretrained, device=args.device)
    emb = encode_class_names(model, tokenizer, names, templates, normalize_each=args.normalize_each,
                             normalize_mean=args.normalize_mean, batch_size=args.batch_size, device=args.device,
                             progress=True)
    meta = dict(model=args.model, pretrained=osp.basename(args.pretrained or ''), templates=templates_digest(templates),
                num_templates=len(templates), normalize_each=args.normalize_each, normalize_mean=args.normalize_mean,
                classes_file=','.join(osp.basename(c) for c in args.classes))
    if ids is not None:
        meta['category_ids'] = json.dumps(ids)
    save_class_embeddings(args.out, emb, names, meta=meta)
    load_class_embeddings(args.out, expected_class_names=names)  # read back and check
    print(f'wrote {args.out}: {emb.shape[0]} classes x {emb.shape[1]} dims, {len(templates)} templates')
    return 0


if __name__ == '__main__':
    sys.exit(main())
