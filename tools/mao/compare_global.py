#!/usr/bin/env python
"""MaO: one global descriptor per gallery image vs the multi-object descriptor, same encoder, mAP / Recall@K.

    python tools/mao/compare_global.py CONFIG [--variants global proposals oracle oracle:0 ...] [--ks 1 5 10]
        [--out rows.json] [--device cpu|cuda|cuda:N|auto] [--batch-size N] [--cfg-options k=v ...]

Variants (``queryvision_mm/apis/mao_compare.py``): ``global`` (whole image embedded), ``proposals[:MIN_CROP]`` (the
config's describer: its proposal model, crops, its aggregation), ``oracle[:MIN_CROP]`` (ground-truth boxes as
proposals); ``MIN_CROP`` overrides ``min_crop_size`` (0 = tight square crops). Prints a Markdown table and the rows
as JSON (``--out`` writes them to a file).
"""
import argparse
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from _bootstrap import import_queryvision_mm  # noqa: E402


def main(argv=None):
    from mmengine.config import Config, DictAction
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('--variants', nargs='+', default=None,
                   help='global | proposals[:MIN_CROP] | oracle[:MIN_CROP] (default: global proposals oracle '
                   'oracle:0)')
    p.add_argument('--ks', type=int, nargs='+', default=[1, 5, 10], help='Recall@K cut-offs')
    p.add_argument('--out', default=None, help='write the rows as JSON here')
    p.add_argument('--device', default=None, help="cpu | cuda | cuda:N | auto (default: the config's)")
    p.add_argument('--batch-size', type=int, default=None, help='images per describer call')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = p.parse_args(argv)
    import_queryvision_mm()
    from mmengine.registry import DefaultScope

    from queryvision_mm.apis.mao_compare import DEFAULT_VARIANTS, compare_global_vs_multi_object, format_table
    from queryvision_mm.apis.mao_extract import set_describer_options
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    set_describer_options(cfg, device=args.device)
    DefaultScope.get_instance('qv_mao_compare', scope_name=cfg.get('default_scope', 'mmpretrain'))
    rows = compare_global_vs_multi_object(cfg, args.variants or DEFAULT_VARIANTS, ks=args.ks,
                                          batch_size=args.batch_size)
    print(format_table(rows, args.ks))
    print(json.dumps(rows, indent=1))
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
