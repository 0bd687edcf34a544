#!/usr/bin/env python3
"""Generate the embedded demo datasets (thin CLI over ``queryvision_mm.testing.demo_data``: ``demo_shapes``,
``demo_v3det``, ``demo_photos``).

Examples::

    python tools/misc/make_demo_data.py --out-dir data/demo_shapes --seed 0        # Semi-DETR / Sparse Semi-DETR
    python tools/misc/make_demo_data.py --kind v3det --out-dir data/demo_v3det     # CQ-DINO (mini V3Det format)
    python tools/misc/make_demo_data.py --kind qks --out-dir data/demo_qks --random-clip   # QKS (real photos)
    python tools/misc/make_demo_data.py --kind mao --out-dir data/demo_mao                 # MaO (small objects)

Options (shapes; the other kinds list theirs with ``--kind K --help``): ``--out-dir``, ``--num-labeled``,
``--num-unlabeled``, ``--num-val``, ``--size`` (S or W H),
``--seed`` and ``--overwrite``. A second run with the same options returns immediately.
"""
import importlib
import importlib.util
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _load_demo_module(name='demo_shapes'):
    """Import ``queryvision_mm.testing.demo_data.<name>``, from this checkout if the package isn't installed.

    If importing the package fails (e.g. its ``__init__.py`` needs mmdet, which is not installed
    in this interpreter), the module file is loaded on its own: it only needs numpy and Pillow.
    """
    try:
        import queryvision_mm  # noqa: F401
    except ImportError:
        sys.path.insert(0, REPO_ROOT)
    try:
        return importlib.import_module(f'queryvision_mm.testing.demo_data.{name}')
    except ImportError:
        path = osp.join(REPO_ROOT, 'queryvision_mm', 'testing', 'demo_data', f'{name}.py')
        spec = importlib.util.spec_from_file_location(f'queryvision_mm_{name}', path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module


if __name__ == '__main__':
    argv = sys.argv[1:]
    kind = 'shapes'
    if '--kind' in argv:
        i = argv.index('--kind')
        kind = argv[i + 1] if i + 1 < len(argv) else ''
        del argv[i:i + 2]
    modules = dict(shapes='demo_shapes', v3det='demo_v3det', qks='demo_photos', mao='demo_photos')
    if kind not in modules:
        sys.exit(f'--kind must be one of {sorted(modules)}, got {kind!r}')
    if kind in ('qks', 'mao'):
        argv = ['--task', kind] + argv
    sys.exit(_load_demo_module(modules[kind]).main(argv))
