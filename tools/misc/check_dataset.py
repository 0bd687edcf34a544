"""Pre-flight check of a config's datasets: open every image and compare every annotation with it, before a long run.

    python tools/misc/check_dataset.py CONFIG [--splits train val test] [--workers N] [--out report.json]
                                       [--max-print 50] [--cfg-options k=v ...]

Builds each split's dataset exactly as the config does (semi-supervised configs: the labeled and the unlabeled sets
of the training ConcatDataset; V3Det; the mmpretrain datasets of QKS / MaO), reads and decodes every image with a
progress bar and lists what is missing, empty (0 bytes), unreadable (undecodable or truncated) or inconsistent
(annotated image size differing from the decoded one, boxes outside the image or of non-positive size, duplicated
image / annotation ids or image paths, annotations of unknown images; a dataset that fails to build). Prints a
report, optionally writes it as JSON, and exits with 1 when anything was found (0 otherwise).
"""
import argparse
import json
import os.path as osp
import sys
from collections import Counter

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # tools/
from _bootstrap import import_queryvision_mm  # noqa: E402

SPLITS = ('train', 'val', 'test')


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('--splits', nargs='+', choices=SPLITS, default=list(SPLITS))
    parser.add_argument('--workers', type=int, default=0, help='processes decoding images (0/1: this process)')
    parser.add_argument('--out', help='write the full report to this JSON file')
    parser.add_argument('--max-print', type=int, default=50, help='problems printed per split and kind')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config values (k=v)')
    return parser.parse_args(argv)


def build_split_datasets(cfg, split):
    """The split's dataset built from the config (in the config's scope), or None if the config has none."""
    from mmengine.registry import DATASETS, init_default_scope

    from queryvision_mm.utils.cli import config_scope
    loader = cfg.get(f'{split}_dataloader', None)
    if not loader or not loader.get('dataset'):
        return None
    scope = config_scope(cfg)
    if scope == 'mmpretrain':
        from mmpretrain.utils import register_all_modules
    else:
        from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    init_default_scope(scope)
    return DATASETS.build(loader.dataset)


def check_config(cfg, splits=SPLITS, workers=0) -> dict:
    """The report: per split, its leaf datasets and their problems (see ``queryvision_mm/utils/dataset_check.py``)."""
    from queryvision_mm.utils.dataset_check import (check_records, coco_file_problems, dataset_records,
                                                    inspect_images, leaf_datasets)
    report = dict(splits={}, num_problems=0)
    images, built = {}, {}  # path -> inspection (shared by the splits); dataset config -> split already checked
    for split in splits:
        loader = cfg.get(f'{split}_dataloader', None)
        key = json.dumps(loader.get('dataset') if loader else None, sort_keys=True, default=str)
        if key in built:
            report['splits'][split] = dict(same_as=built[key], datasets=[], problems=[])
            continue
        entry = dict(datasets=[], problems=[])
        report['splits'][split] = entry
        try:
            dataset = build_split_datasets(cfg, split)
        except Exception as e:
            entry['problems'].append(dict(kind='build', path=str(loader.dataset.get('ann_file', '')),
                                          detail=f'{type(e).__name__}: {e}'))
            continue
        if dataset is None:
            entry['absent'] = True
            continue
        built[key] = split
        leaves = leaf_datasets(dataset)
        records = [list(dataset_records(ds)) for ds in leaves]
        tasks = sorted({(r['path'], json.dumps(getattr(ds, 'backend_args', None), sort_keys=True))
                        for ds, recs in zip(leaves, records) for r in recs if r['path'] not in images})
        print(f'[check_dataset] {split}: {sum(map(len, records))} items in {len(leaves)} dataset(s), '
              f'{len(tasks)} images to read')
        for result in inspect_images([(p, json.loads(b)) for p, b in tasks], workers):
            images[result['path']] = result
        for ds, recs in zip(leaves, records):
            entry['datasets'].append(dict(type=type(ds).__name__, ann_file=getattr(ds, 'ann_file', ''),
                                          num_items=len(recs)))
            if getattr(ds, 'ann_file', None):
                entry['problems'].extend(coco_file_problems(ds.ann_file, getattr(ds, 'backend_args', None)))
            entry['problems'].extend(check_records(recs, images))
    report['num_problems'] = sum(len(e['problems']) for e in report['splits'].values())
    return report


def print_report(report, max_print=50) -> None:
    for split, entry in report['splits'].items():
        if entry.get('same_as'):
            print(f'{split}: the same dataset as {entry["same_as"]}')
            continue
        if entry.get('absent'):
            print(f'{split}: no dataset in the config')
            continue
        sizes = ', '.join(f'{d["type"]} {d["ann_file"]} ({d["num_items"]} items)' for d in entry['datasets'])
        problems = entry['problems']
        counts = Counter(p['kind'] for p in problems)
        summary = ', '.join(f'{n} {k}' for k, n in counts.items()) or 'no problems'
        print(f'{split}: {sizes or "not built"}: {summary}')
        printed = Counter()
        for p in problems:
            printed[p['kind']] += 1
            if printed[p['kind']] <= max_print:
                print(f'  {p["kind"]:<17} {p["path"]}  {p["detail"]}')
        for kind, n in counts.items():
            if n > max_print:
                print(f'  ... {n - max_print} more {kind} (all in --out)')
    print(f'[check_dataset] {report["num_problems"]} problem(s)')


def main(argv=None) -> int:
    args = parse_args(argv)
    import_queryvision_mm()
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    report = check_config(cfg, args.splits, args.workers)
    report['config'] = args.config
    print_report(report, args.max_print)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=1)
        print(f'[check_dataset] report: {args.out}')
    return 1 if report['num_problems'] else 0


if __name__ == '__main__':
    sys.exit(main())
