"""Makes ``queryvision_mm`` importable for the tools, also from a source checkout without installation."""
import importlib.util
import os
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def import_queryvision_mm():
    """Import the plugin (repo root on ``sys.path`` if it is not installed): registers the detection modules (a
    config's ``custom_imports`` adds ``queryvision_mm.mmpretrain_plugin`` for QKS / MaO) and applies the safe
    checkpoint-loading shim explicitly (idempotent; ``import queryvision_mm`` alone does not)."""
    if importlib.util.find_spec('queryvision_mm') is None:
        sys.path.insert(0, REPO_ROOT)
    import queryvision_mm  # noqa: F401
    from queryvision_mm.utils import setup_safe_checkpoint_loading
    setup_safe_checkpoint_loading()


def add_common_args(parser) -> None:
    """The arguments mmdet's train.py and test.py share: --cfg-options, --launcher, --local-rank."""
    from mmengine.config import DictAction
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override some settings in the used config, the key-value pair in xxx=yyy format will be merged '
        'into config file. If the value to be overwritten is a list, it should be like key="[a,b]" or key=a,b '
        'It also allows nested list/tuple values, e.g. key="[(a,b),(c,d)]" Note that the quotation marks are '
        'necessary and that no white space is allowed.')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0); torchrun sets LOCAL_RANK instead
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def export_local_rank(args) -> None:
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
