"""Image loading that survives a few unreadable files in long training runs, and never hides one in evaluation."""
import logging
from typing import Dict, Optional

from mmcv.transforms import LoadImageFromFile
from mmengine.logging import print_log
from mmengine.registry import TRANSFORMS  # mmcv's root registry: visible from the mmdet and mmpretrain scopes


@TRANSFORMS.register_module()
class QVLoadImageFromFile(LoadImageFromFile):
    """mmcv's ``LoadImageFromFile`` with an explicit policy for unreadable images (missing, empty or undecodable).

    ``skip_unreadable=True`` (training pipelines, the default): the image is skipped — a warning names the file and
    the transform returns ``None``, so mmengine's ``BaseDataset.__getitem__`` draws another index of the same dataset
    (up to its ``max_refetch`` times). Skips are counted per data-loading process (each dataloader worker counts its
    own loads); when more than ``max_skip_fraction`` of ``max(loads, min_loads)`` loads were skipped, a
    ``RuntimeError`` names the skipped files and stops the run. ``min_loads`` keeps a few bad images early in a run
    from stopping it (at the defaults, up to 10 skips are always tolerated), while a wrong image root still fails
    after 11 loads.

    ``skip_unreadable=False`` (evaluation / test pipelines): an unreadable image is a ``RuntimeError`` naming the
    file, so a test set is never silently smaller (mmcv's own error does not name the file for an empty one). A
    skipping loader in a ``test_mode`` dataset is an error too (mmengine's), after the warning naming the file.

    Args:
        skip_unreadable (bool): skip (``True``) or raise (``False``). Defaults to True.
        max_skip_fraction (float): largest tolerated fraction of skipped loads. Defaults to 0.001.
        min_loads (int): the fraction is taken of at least this many loads. Defaults to 10000.
        **kwargs: ``LoadImageFromFile``'s arguments (``backend_args``, ``color_type``, ``imdecode_backend``, ...);
            ``ignore_empty`` (silent skipping) is not accepted.
    """

    def __init__(self, skip_unreadable: bool = True, max_skip_fraction: float = 0.001, min_loads: int = 10000,
                 **kwargs) -> None:
        if kwargs.pop('ignore_empty', False):
            raise ValueError('QVLoadImageFromFile: use skip_unreadable instead of ignore_empty (which skips silently)')
        if not 0 <= max_skip_fraction < 1:
            raise ValueError(f'max_skip_fraction must be in [0, 1), got {max_skip_fraction}')
        super().__init__(ignore_empty=False, **kwargs)
        self.skip_unreadable = skip_unreadable
        self.max_skip_fraction = float(max_skip_fraction)
        self.min_loads = int(min_loads)
        self.num_loads = 0
        self.skipped: Dict[str, int] = {}  # path -> times skipped, in this process
        self.num_skipped = 0

    def transform(self, results: dict) -> Optional[dict]:
        filename = results['img_path']
        self.num_loads += 1
        try:
            out = super().transform(results)
            if out is None or out.get('img') is None:
                raise ValueError('the decoder returned no image')
            return out
        except Exception as e:  # missing / empty / undecodable file, or a storage backend error
            reason = f'{type(e).__name__}: {e}'.strip()
            if not self.skip_unreadable:
                raise RuntimeError(f'unreadable image {filename} ({reason})') from e
            return self._skip(filename, reason)

    def _skip(self, filename: str, reason: str) -> None:
        self.num_skipped += 1
        self.skipped[filename] = self.skipped.get(filename, 0) + 1
        limit = self.max_skip_fraction * max(self.num_loads, self.min_loads)
        print_log(f'QVLoadImageFromFile: skipped unreadable image {filename} ({reason}); {self.num_skipped} of '
                  f'{self.num_loads} loads skipped in this process (limit: {self.max_skip_fraction:g} of at least '
                  f'{self.min_loads} loads)', logger='current', level=logging.WARNING)
        if self.num_skipped > limit:
            names = sorted(self.skipped)
            shown = ', '.join(names[:20]) + (f' and {len(names) - 20} more' if len(names) > 20 else '')
            raise RuntimeError(
                f'QVLoadImageFromFile: {self.num_skipped} of {self.num_loads} image loads in this process were '
                f'unreadable, more than max_skip_fraction={self.max_skip_fraction:g} of max(loads, '
                f'min_loads={self.min_loads}); unreadable files: {shown}. List every bad file with '
                f'tools/misc/check_dataset.py CONFIG, fix or remove them, or raise max_skip_fraction.')
        return None

    def __repr__(self) -> str:
        return (f'{super().__repr__()[:-1]}, skip_unreadable={self.skip_unreadable}, '
                f'max_skip_fraction={self.max_skip_fraction}, min_loads={self.min_loads})')
