"""Restricted loading of the prediction pickles that ``tools/test.py --out`` writes (mmdet's ``DumpDetResults``: a list
of dicts of tensors, NumPy arrays and plain values), for offline evaluation.

Beyond :data:`queryvision_mm.utils.safe_pickle.DATA_GLOBALS`, only tensor reconstruction is resolved: tensor storages
are read with ``torch.load(weights_only=True)`` (pickle's default path, ``torch.storage._load_from_bytes``, uses
``weights_only=False``). Any other global raises ``pickle.UnpicklingError`` instead of running code.
"""
import io
import pickle

import torch

from .safe_pickle import DATA_GLOBALS, RestrictedUnpickler


def _storage_from_bytes(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=True)


_TORCH_GLOBALS = {
    ('torch._utils', '_rebuild_tensor_v2'): torch._utils._rebuild_tensor_v2,
    ('torch.storage', '_load_from_bytes'): _storage_from_bytes,
    ('torch', 'Size'): torch.Size,
}


class PredictionUnpickler(RestrictedUnpickler):

    def find_class(self, module, name):
        if (module, name) in _TORCH_GLOBALS:
            return _TORCH_GLOBALS[module, name]
        if (module, name) not in DATA_GLOBALS:
            raise pickle.UnpicklingError(f'refusing to load {module}.{name}: a prediction dump holds only tensors, '
                                         'arrays and plain values')
        return pickle.Unpickler.find_class(self, module, name)


def load_predictions(path: str) -> list:
    """The list of per-image prediction dicts of a ``--out`` pickle."""
    with open(path, 'rb') as f:
        predictions = PredictionUnpickler(f, encoding='ASCII').load()
    if not isinstance(predictions, list) or not all(isinstance(p, dict) for p in predictions):
        raise ValueError(f'{path}: not a prediction dump of tools/test.py --out (a list of dicts)')
    return predictions
