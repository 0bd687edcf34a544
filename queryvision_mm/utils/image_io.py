"""Image reading with errors that name the file (used by the MaO tools and datasets)."""
import numpy as np


def read_rgb(path: str) -> np.ndarray:
    """HxWx3 uint8 RGB array of an image file; a missing or undecodable file raises ``OSError`` naming it."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            return np.array(im.convert('RGB'))
    except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
        raise OSError(f'failed to load image: {path} ({e.__class__.__name__}: {e})') from e
