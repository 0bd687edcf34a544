#!/usr/bin/env python
# Copyright (c) queryvision_mm contributors. All rights reserved.
"""Convert a TRUSTED legacy mmengine checkpoint into one that loads with ``torch.load(weights_only=True)``.

    python tools/misc/convert_legacy_checkpoint.py IN.pth OUT.pth

mmengine 0.10.x checkpoints pickle the message hub's ``HistoryBuffer`` objects together with their
statistics methods (``builtins.getattr(HistoryBuffer, 'min')`` ...), which torch >= 2.6 refuses to load
safely. This tool reads IN with ``weights_only=False`` -- FULL PICKLE, WHICH CAN EXECUTE ARBITRARY CODE:
only run it on files you trust -- and writes OUT with plain HistoryBuffer state (see
``queryvision_mm/utils/checkpoint.py``). OUT is then checked with ``weights_only=True``; if other
non-allow-listed objects remain, OUT is not written (unless ``--no-verify``) and they are listed.
"""
import argparse
import importlib.util
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args():
    parser = argparse.ArgumentParser(
        description='Re-save a trusted legacy mmengine checkpoint so that it loads with weights_only=True. '
        'The input is unpickled with weights_only=False: use only on files you trust.')
    parser.add_argument('src', help='trusted legacy checkpoint')
    parser.add_argument('dst', help='output checkpoint (may equal src)')
    parser.add_argument(
        '--no-verify',
        action='store_true',
        help='write the output even if it still contains objects that are not allow-listed')
    return parser.parse_args()


def main():
    args = parse_args()
    if importlib.util.find_spec('queryvision_mm') is None:
        sys.path.insert(0, REPO_ROOT)
    from queryvision_mm.utils.checkpoint import UnsafeCheckpointError, convert_legacy_checkpoint

    try:
        remaining = convert_legacy_checkpoint(args.src, args.dst, verify=not args.no_verify)
    except UnsafeCheckpointError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    if remaining:
        print(f'warning: {args.dst} still references non-allow-listed globals: {", ".join(remaining)}',
              file=sys.stderr)
    print(f'converted {args.src} -> {args.dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
