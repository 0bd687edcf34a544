"""Makes ``queryvision_mm`` importable for the tools, also from a source checkout without installation."""
import importlib.util
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def import_queryvision_mm():
    """Import the plugin (repo root on ``sys.path`` if it is not installed): registers all modules and applies
    the safe checkpoint-loading shim (idempotent)."""
    if importlib.util.find_spec('queryvision_mm') is None:
        sys.path.insert(0, REPO_ROOT)
    import queryvision_mm  # noqa: F401
    from queryvision_mm.utils import setup_safe_checkpoint_loading
    setup_safe_checkpoint_loading()
