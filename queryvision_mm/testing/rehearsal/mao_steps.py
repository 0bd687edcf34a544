"""Rehearsal steps of the MaO configs, which are not (only) ``tools/train.py`` / ``tools/test.py`` configs:

* descriptor configs (``model.type == 'QVMaODescriber'``: ``configs/mao/voxdet_*_zeroshot.py``, ``demo_photos.py``):
  ``tools/mao/extract.py`` (proposals -> masks -> crops -> encoder -> stage B -> index -> mAP over the queries), a
  check that the run went through every part (objects found, SAM masks cached, not only whole-image fallbacks), and
  ``tools/mao/search.py`` with one query of the dataset on the saved index (LeGrad grid).
* stage A (``configs/mao/voxdet_dinov2_lora.py``: a ``QVSoIRPairDataset`` with ``crop_source='proposals'``): step 1
  of the config's comment, ``tools/mao/extract.py --work-dir <dir of proposals_file> --cfg-options dataset.sets=<the
  training sets> describer.refine=None describer.masks=None describer.encoder.lora_adapter=None``, which writes the
  ``proposals.json`` that the training set reads; then the default train / resume / AMP steps; as its "test", step 3:
  ``tools/mao/extract.py`` with the trained adapter merged (``describer.encoder.lora_adapter=<train>/lora_adapter``).

``tools/mao/extract.py`` runs as the config comments launch it on N GPUs: with ``--gpus N > 1`` through ``torchrun
--standalone --nproc_per_node N ... --launcher pytorch`` (the gallery sharded over the ranks, rank 0 merging; tested
against one process in ``tests/test_models/test_mao_extract_dist.py``), in one process otherwise.
"""
import json
import os
import os.path as osp
import sys

from .context import step_plan

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
EXTRACT = osp.join(REPO, 'tools', 'mao', 'extract.py')
SEARCH = osp.join(REPO, 'tools', 'mao', 'search.py')


def extract_cmd(run, args) -> list:
    """``tools/mao/extract.py ARGS``: sharded over ``run.nproc`` processes (the rehearsal's ``--gpus``) when > 1."""
    n = int(getattr(run, 'nproc', 1) or 1)
    if n > 1:
        return [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={n}', EXTRACT,
                *args, '--launcher', 'pytorch']
    return [sys.executable, EXTRACT, *args]


def _describer(rcfg):
    return rcfg.get('describer') or rcfg.get('model') or {}


def _check_cmd(out_dir: str, expect_masks: bool, expect_metrics: bool):
    return [sys.executable, '-m', __name__, 'check', out_dir] + (['--masks'] if expect_masks else []) + \
        (['--metrics'] if expect_metrics else [])


def first_query(rcfg, sandbox: str) -> dict:
    """The first query (image path relative to the sandbox, box) of the config's evaluation dataset."""
    from queryvision_mm.datasets import QVSoIRDataset
    ds = dict(rcfg.dataset)
    ds.pop('type')
    cwd = os.getcwd()
    os.chdir(sandbox)
    try:
        dataset = QVSoIRDataset(**ds)
        queries = [dataset.get_data_info(i) for i in range(dataset.metainfo['num_queries'])]
    finally:
        os.chdir(cwd)
    if not queries:
        raise ValueError(f'rehearsal: {rcfg.dataset.ann_file} has no query to search with')
    return queries[0]


@step_plan
def mao_descriptor_steps(rcfg, rcfg_path, wd, run) -> bool:
    if (rcfg.get('model') or {}).get('type') != 'QVMaODescriber':
        return False
    out = osp.join(wd, 'extract')
    res = run('extract', extract_cmd(run, [rcfg_path, '--work-dir', out]))
    if not res.ok:
        return True
    run('extract_check', _check_cmd(out, expect_masks=bool(rcfg.model.get('masks')), expect_metrics=True))
    q = first_query(rcfg, osp.dirname(rcfg_path))
    run('search', [sys.executable, SEARCH, rcfg_path, q['img_path'], '--box', *[str(v) for v in q['query_box']],
                   '--index', osp.join(out, 'index'), '--out', osp.join(wd, 'search.png'), '--topk', '3'])
    return True


def _stage_a_dataset(rcfg):
    from .plan import iter_datasets
    loader = rcfg.get('train_dataloader') or {}
    for ds in iter_datasets(loader.get('dataset')):
        if ds['type'] == 'QVSoIRPairDataset' and ds.get('crop_source', 'proposals') == 'proposals':
            return ds
    return None


def _stage_a_test(rcfg, rcfg_path, wd, run, final_checkpoint) -> None:
    """Step 3 of the stage-A config: index + evaluate with the trained adapter merged into the encoder."""
    adapter = osp.join(osp.dirname(final_checkpoint), 'lora_adapter')
    out = osp.join(wd, 'test')
    res = run('test', extract_cmd(run, [rcfg_path, '--work-dir', out, '--cfg-options',
                                        f'describer.encoder.lora_adapter={adapter}']))
    if res.ok:
        run('test_check', _check_cmd(out, expect_masks=bool(_describer(rcfg).get('masks')), expect_metrics=True))


@step_plan
def mao_stage_a_proposals(rcfg, rcfg_path, wd, run) -> bool:
    """Step 1 of the stage-A config: OWLv2 proposals of the training scenes (``proposals.json``), then the default
    train / resume / AMP steps (``test_trained`` = step 3)."""
    ds = _stage_a_dataset(rcfg)
    if ds is None:
        return False
    if not rcfg.get('dataset') or rcfg.dataset.get('ann_file') != ds['ann_file']:
        raise NotImplementedError('rehearsal: the stage-A proposals step extracts from cfg.dataset with the training '
                                  'sets; it needs the same ann_file as the training set')
    out = osp.dirname(ds['proposals_file'])
    sets = list(ds.get('sets') or [])
    opts = [f'dataset.sets={sets!r}', 'describer.refine=None', 'describer.masks=None',
            'describer.encoder.lora_adapter=None']
    res = run('proposals', extract_cmd(run, [rcfg_path, '--work-dir', out, '--cfg-options', *opts]))
    if res.ok:
        run('proposals_check', _check_cmd(out, expect_masks=False, expect_metrics=False))
    return False


mao_stage_a_proposals.test_trained = lambda rcfg, *args: (
    _stage_a_test(rcfg, *args) if _stage_a_dataset(rcfg) is not None else None)


def check(out_dir: str, masks: bool, metrics: bool) -> dict:
    """What a MaO extraction went through: objects found, masks cached, metrics computed, proposals written."""
    with open(osp.join(out_dir, 'results.json')) as f:
        res = json.load(f)
    with open(osp.join(out_dir, 'proposals.json')) as f:
        proposals = json.load(f)
    from queryvision_mm.apis.mao_extract import iter_cache_meta
    cached_masks = 0
    for meta in iter_cache_meta(osp.join(out_dir, 'gallery_cache')):   # sharded: <2 hex>/<2 hex>/<sha1>.json
        with open(meta) as f:
            cached_masks += len(json.load(f).get('masks') or [])
    facts = dict(gallery=res['gallery'], objects=res['objects'], fallback=res['fallback'], masks=cached_masks,
                 proposals=sum(len(b) for b in proposals.values()), mAP=res.get('mAP'))
    print(json.dumps(facts))
    problems = []
    if res['objects'] == 0 or res['fallback'] == res['gallery']:
        problems.append('no gallery image had an object proposal: masks, crops and stage B never ran')
    if masks and cached_masks == 0:
        problems.append('no SAM mask was computed')
    if metrics and 'mAP' not in res:
        problems.append('no query was evaluated')
    if len(proposals) != res['gallery']:
        problems.append(f'proposals.json lists {len(proposals)} of {res["gallery"]} gallery images')
    if problems:
        raise SystemExit('rehearsal check failed: ' + '; '.join(problems))
    return facts


if __name__ == '__main__':
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument('what', choices=['check'])
    p.add_argument('out_dir')
    p.add_argument('--masks', action='store_true')
    p.add_argument('--metrics', action='store_true')
    a = p.parse_args()
    check(a.out_dir, a.masks, a.metrics)
