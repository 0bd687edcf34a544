from . import metrics  # noqa: F401
from .metrics import *  # noqa: F401,F403
from .metrics import __getattr__  # noqa: F401  (mmpretrain metrics on first access)
