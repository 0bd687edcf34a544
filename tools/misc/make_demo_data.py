#!/usr/bin/env python3
"""Generate the synthetic demo-shapes COCO dataset (thin CLI over ``queryvision_mm.datasets.demo_shapes``).

Example::

    python tools/misc/make_demo_data.py --out-dir data/demo_shapes --seed 0

Options: ``--out-dir``, ``--num-labeled``, ``--num-unlabeled``, ``--num-val``, ``--size`` (S or W H),
``--seed`` and ``--overwrite``. A second run with the same options returns immediately.
"""
import importlib.util
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _load_demo_shapes():
    """Import ``queryvision_mm.datasets.demo_shapes``, from this checkout if the package isn't installed.

    If importing the package fails (e.g. its ``datasets/__init__.py`` needs mmdet, which is not installed
    in this interpreter), the module file is loaded on its own: it only needs numpy and Pillow.
    """
    try:
        import queryvision_mm  # noqa: F401
    except ImportError:
        sys.path.insert(0, REPO_ROOT)
    try:
        from queryvision_mm.datasets import demo_shapes
        return demo_shapes
    except ImportError:
        path = osp.join(REPO_ROOT, 'queryvision_mm', 'datasets', 'demo_shapes.py')
        spec = importlib.util.spec_from_file_location('queryvision_mm_demo_shapes', path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module


if __name__ == '__main__':
    sys.exit(_load_demo_shapes().main())
