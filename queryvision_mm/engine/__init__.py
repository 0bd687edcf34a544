from .hooks import *  # noqa: F401,F403
from .hooks import __getattr__  # noqa: F401  (mmpretrain hooks on first access)
from .optimizers import *  # noqa: F401,F403
from .schedulers import *  # noqa: F401,F403
