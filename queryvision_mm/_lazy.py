"""PEP 562 lazy attributes for sub-packages that mix detection (mmdet) and classification / retrieval
(mmpretrain) modules.

``import queryvision_mm`` imports and registers the detection modules only; the mmpretrain-based ones (QKS, MaO) are
imported by :mod:`queryvision_mm.mmpretrain_plugin` (configs list it in ``custom_imports``). Their public names stay
importable from the sub-packages (``from queryvision_mm.models import QVQKSClassifier``): the first access imports
the module that defines the name, and with it mmpretrain.
"""
import importlib
from typing import Callable, Dict, Sequence


def lazy_module_getattr(package: str, names: Dict[str, str],
                        search: Sequence[str] = ()) -> Callable[[str], object]:
    """A module-level ``__getattr__`` for ``package`` resolving each of ``names`` (public name -> relative module,
    e.g. ``{'QVQKSClassifier': '.classifiers'}``) by importing that module on first access.

    Other public names (no leading underscore) are looked up in the ``__all__`` of the ``search`` modules (imported
    in turn), so that names a sub-package adds later need no entry here.
    """

    def __getattr__(name: str):
        module = names.get(name)
        if module is not None:
            return getattr(importlib.import_module(module, package), name)
        if not name.startswith('_'):
            for candidate in search:
                mod = importlib.import_module(candidate, package)
                if name in getattr(mod, '__all__', ()):
                    return getattr(mod, name)
        raise AttributeError(f'module {package!r} has no attribute {name!r}')

    return __getattr__
