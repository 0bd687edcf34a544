"""Restricted unpickling for dataset files that only exist as pickles (LESA's Open Images label list, PerMIRS masks).

Only the globals needed to rebuild plain containers, strings, numbers and NumPy arrays are resolved; any other global
(``os.system``, ``builtins.eval``, arbitrary classes) raises ``pickle.UnpicklingError`` instead of running code.
"""
import io
import pickle
from typing import BinaryIO

DATA_GLOBALS = frozenset({
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode'),
    ('builtins', 'list'), ('builtins', 'tuple'), ('builtins', 'dict'), ('builtins', 'set'), ('builtins', 'str'),
    ('builtins', 'int'), ('builtins', 'float'), ('builtins', 'bool'), ('collections', 'OrderedDict'),
})


class RestrictedUnpickler(pickle.Unpickler):

    def find_class(self, module, name):
        if (module, name) not in DATA_GLOBALS:
            raise pickle.UnpicklingError(f'refusing to load {module}.{name}: only plain data and NumPy arrays')
        return super().find_class(module, name)


def restricted_load(f: BinaryIO, encoding: str = 'latin1'):
    """``pickle.load`` limited to :data:`DATA_GLOBALS`."""
    return RestrictedUnpickler(f, encoding=encoding).load()


def load_object_npy(path: str):
    """``np.load(path, allow_pickle=True)`` for a ``.npy`` holding an object array, without arbitrary code: the
    header is parsed by NumPy, the pickled payload by :class:`RestrictedUnpickler`."""
    import numpy as np
    from numpy.lib import format as npformat
    with open(path, 'rb') as f:
        version = npformat.read_magic(f)
        read_header = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if not dtype.hasobject:
            f.seek(0)
            return np.load(f, allow_pickle=False)
        return restricted_load(io.BytesIO(f.read()))
