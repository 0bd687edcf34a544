"""MaO as an mmpretrain retriever: ``QVMaORetriever(BaseRetriever)`` (arXiv 2503.07038, Sec. 3: gallery images ->
one stage-B descriptor each, queries -> plain object-crop embedding, exhaustive inner-product search).

* Features: a gallery image goes through :class:`QVMaODescriber` (OWLv2 proposals -> SAM masks -> object crops ->
  stage B, or the whole-image fallback); a query image through its query crop (square of side max(w, h) around
  ``query_box`` when its data sample carries one -- the test split of :class:`QVSoIRRetrievalDataset` -- else around
  the whole image, e.g. an already cropped query given to ``ImageRetrievalInferencer``).
* Prototype store: a :class:`~queryvision_mm.utils.descriptor_index.DescriptorIndex` (exact ``IndexFlatIP`` by
  default; ``index`` = its options). ``prototype`` is, as for mmpretrain's ``ImageToImageRetriever``: a dataloader
  config or ``DataLoader`` over the gallery (described here, ranks sharing the images), a saved index folder (e.g.
  ``WORK_DIR/index`` of ``tools/mao/extract.py``, checked against this describer's fingerprint), a ``.pth`` tensor
  file of descriptors (what mmpretrain's ``dump_prototype`` writes) or a [G, D] tensor. ``prototype_cache``: an
  index folder loaded instead of describing the gallery when it exists (its image paths must equal the
  dataloader's), written after describing it otherwise.
* ``predict`` returns mmpretrain ``DataSample``s with ``pred_score`` (a score per gallery image; images outside the
  top ``topk`` of an approximate index get -inf) and ``pred_label`` (the ranking), so ``tools/test.py`` with
  ``RetrievalRecall`` / ``RetrievalAveragePrecision`` (``gt_label`` = indices of the relevant gallery images) and
  ``ImageRetrievalInferencer`` work on MaO configs (``configs/mao/demo_photos_retriever.py``).

Images reach the model as mmpretrain packs them (``LoadImageFromFile`` + ``PackInputs``: CHW uint8, BGR);
:class:`QVMaODataPreprocessor` turns them into the HWC uint8 RGB arrays the describer takes, keeping each image's
own size (the MaO pipeline needs the original resolution). Stage B needs gradients: gallery description runs under
``torch.enable_grad()`` even inside mmengine's test loop / the inferencer (which run under ``no_grad``).
"""
import os
import os.path as osp
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine import dist
from mmengine.model import BaseDataPreprocessor
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mmpretrain.models.retrievers import BaseRetriever
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from ...utils.descriptor_index import DescriptorIndex


@MODELS.register_module()
class QVMaODataPreprocessor(BaseDataPreprocessor):
    """Packed images (a [B, 3, H, W] uint8 tensor or a list of [3, H, W]; mmcv's BGR order) -> a list of HxWx3
    uint8 RGB numpy arrays (``to_rgb``), one per image, each at its own size; data samples unchanged."""

    def __init__(self, to_rgb: bool = True) -> None:
        super().__init__()
        self.to_rgb = bool(to_rgb)

    def forward(self, data: dict, training: bool = False) -> dict:
        inputs = data['inputs']
        if isinstance(inputs, Tensor):
            inputs = list(inputs) if inputs.dim() == 4 else [inputs]
        images = []
        for i, t in enumerate(inputs):
            a = torch.as_tensor(t).detach().cpu()
            if a.dim() != 3 or a.shape[0] != 3 or a.dtype != torch.uint8:
                raise ValueError(f'QVMaODataPreprocessor: input {i} must be a 3xHxW uint8 image (LoadImageFromFile + '
                                 f'PackInputs), got {tuple(a.shape)} {a.dtype}')
            a = a.permute(1, 2, 0).numpy()
            images.append(np.ascontiguousarray(a[..., ::-1] if self.to_rgb else a))
        return dict(inputs=images, data_samples=data.get('data_samples'))


def _fingerprint(describer_cfg) -> str:
    """The describer fingerprint (config + weight digests) that ``tools/mao/extract.py`` stores in its index
    (``index.meta['model']``)."""
    from ...apis.mao_extract import fingerprint
    return fingerprint(describer_cfg)


@MODELS.register_module()
class QVMaORetriever(BaseRetriever):
    """MaO retrieval with a descriptor index as prototype store (see the module docstring).

    Args:
        describer (dict | QVMaODescriber): the MaO describer (encoder, proposals, masks, refine).
        prototype: gallery: dataloader config / ``DataLoader`` / index folder / ``.pth`` descriptor file / tensor.
        prototype_cache (str, optional): index folder to load (if present) or write (after describing the gallery).
        index (dict, optional): ``DescriptorIndex`` options (default exact CPU search).
        topk (int): results kept per query; -1 (default) ranks the whole gallery (what mAP needs).
        data_preprocessor (dict, optional): defaults to :class:`QVMaODataPreprocessor`.
    """

    def __init__(self, describer: Union[dict, object], prototype=None, prototype_cache: Optional[str] = None,
                 index: Optional[dict] = None, topk: int = -1, data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        # the default preprocessor by class: mmengine's MODELS builds it whatever the current default scope (the
        # MaO tools build a retriever outside any runner)
        super().__init__(prototype=prototype, init_cfg=init_cfg,
                         data_preprocessor=data_preprocessor or dict(type=QVMaODataPreprocessor))
        self.describer_cfg = describer if isinstance(describer, dict) else None
        # a submodule: it moves with the retriever (.to(device)) and its weights appear in the state dict
        self.describer = MODELS.build(describer) if isinstance(describer, dict) else describer
        if not isinstance(self.describer, nn.Module):
            raise TypeError(f'QVMaORetriever: describer must be a QVMaODescriber, got {type(self.describer)}')
        self.prototype_cache = prototype_cache
        self.index_cfg = dict(index or {})
        self.topk = int(topk)
        self.prototype_index: Optional[DescriptorIndex] = None

    # ------------------------------------------------------------------------------------------------ features
    def _query_box(self, image: np.ndarray, sample) -> List[float]:
        box = sample.get('query_box') if sample is not None else None
        if box is None:
            return [0, 0, image.shape[1], image.shape[0]]
        return [float(v) for v in box]

    def extract_feat(self, inputs: List[np.ndarray], data_samples: Optional[Sequence] = None,
                     role: str = 'gallery') -> Tensor:
        """[B, D] unit descriptors of HWC uint8 RGB images: stage-B gallery descriptors (``role='gallery'``) or
        query-crop embeddings (``role='query'``; the sample's ``query_box``, else the whole image)."""
        if role not in ('gallery', 'query'):
            raise ValueError(f"QVMaORetriever.extract_feat: role must be 'gallery' or 'query', got {role!r}")
        samples = list(data_samples) if data_samples is not None else [None] * len(inputs)
        if not len(inputs):
            return torch.zeros(0, 0)
        if role == 'gallery':
            with torch.enable_grad():   # stage B differentiates LeGrad maps, also under a test loop's no_grad
                descs = [out['descriptor'] for out in self.describer.describe_gallery_batch(list(inputs))]
        else:
            descs = self.describer.describe_queries(
                list(inputs), [self._query_box(image, sample) for image, sample in zip(inputs, samples)])
        return torch.as_tensor(np.stack([np.asarray(d, dtype=np.float32) for d in descs]))

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        """``tensor``: gallery descriptors (how mmpretrain retrievers describe prototypes); ``predict``: rank the
        gallery for query images; ``loss``: not available (stage B trains nothing, stage A has its own model)."""
        if mode == 'tensor':
            return self.extract_feat(inputs, data_samples, role='gallery')
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        raise RuntimeError(f'QVMaORetriever: invalid mode {mode!r} (tensor | predict | loss)')

    def loss(self, inputs, data_samples) -> dict:
        raise NotImplementedError('QVMaORetriever has no trainable loss: stage B optimises descriptors, not weights; '
                                  'fine-tune the encoder with QVMaOContrastiveModel '
                                  '(configs/mao/voxdet_dinov2_lora.py)')

    # ------------------------------------------------------------------------------------------------ search
    def matching(self, inputs: Tensor) -> dict:
        """Search the index: dense scores [Q, G] (-inf outside the returned hits), ranked gallery ids per query."""
        index = self.prototype_index
        k = None if self.topk == -1 else self.topk
        scores, ids = index.search(inputs.detach().cpu().numpy().astype(np.float32), k=k)
        dense = torch.full((len(ids), len(index)), float('-inf'))
        labels = []
        for row, (s, i) in enumerate(zip(scores, ids)):
            hit = i >= 0                  # an approximate index may return fewer than k hits (id -1)
            dense[row, torch.as_tensor(i[hit], dtype=torch.long)] = torch.as_tensor(s[hit], dtype=torch.float32)
            labels.append(torch.as_tensor(i[hit], dtype=torch.long))
        return dict(score=dense, pred_label=labels)

    def predict(self, inputs, data_samples: Optional[List[DataSample]] = None, **kwargs) -> List[DataSample]:
        if not self.prototype_inited:
            self.prepare_prototype()
        feats = self.extract_feat(inputs, data_samples, role='query')
        result = self.matching(feats)
        if data_samples is None:
            data_samples = [DataSample() for _ in range(len(feats))]
        for sample, score, label, desc in zip(data_samples, result['score'], result['pred_label'], feats):
            sample.set_pred_score(score).set_pred_label(label)
            sample.set_field(desc, 'descriptor')
        return data_samples

    def rank(self, feats, topk: Optional[int] = 10) -> List[List[tuple]]:
        """Query descriptors [Q, D] (tensor or array) -> per query the ranked [(gallery path, score)] of the index
        (``topk`` hits; None: the whole gallery), one index search for all queries (no dense Q x G matrix)."""
        if not self.prototype_inited:
            self.prepare_prototype()
        q = feats.detach().cpu().numpy() if isinstance(feats, Tensor) else np.asarray(feats)
        scores, ids = self.prototype_index.search(np.ascontiguousarray(q, dtype=np.float32), k=topk)
        paths = self.prototype_index.paths
        return [[(paths[j], float(s)) for j, s in zip(i_row, s_row) if j >= 0] for i_row, s_row in zip(ids, scores)]

    def search(self, image: np.ndarray, box: Optional[Sequence[float]] = None, topk: int = 5):
        """One query object (HWC uint8 RGB image, optional box; none: the whole image) -> ([(gallery path, score)],
        query descriptor), through :meth:`extract_feat` (``role='query'``) and :meth:`rank`."""
        if not self.prototype_inited:
            self.prepare_prototype()
        sample = dict(query_box=list(box)) if box is not None else None
        q = self.extract_feat([image], [sample], role='query')
        return self.rank(q, topk)[0], q[0].numpy()

    # ------------------------------------------------------------------------------------------------ prototype
    def set_index(self, index: DescriptorIndex) -> None:
        """Use an existing descriptor index as the prototype store."""
        self.prototype_index = index
        self.prototype_inited = True

    def build_index(self, descs: np.ndarray, paths: Sequence[str]) -> DescriptorIndex:
        """A descriptor index (the config's ``index`` settings) of ``descs`` with the gallery ``paths``, stamped with
        this describer's fingerprint."""
        index = DescriptorIndex(descs.shape[1], **self.index_cfg)
        index.add(descs, list(paths))
        if self.describer_cfg is not None:
            index.meta.update(model=_fingerprint(self.describer_cfg))
        return index

    def load_index(self, folder: str) -> DescriptorIndex:
        """A saved index (``tools/mao/extract.py``'s ``WORK_DIR/index``), refused if another describer made it."""
        index = DescriptorIndex.load(folder, **self.index_cfg)
        stored = index.meta.get('model')
        if self.describer_cfg is not None and stored is not None and stored != _fingerprint(self.describer_cfg):
            raise ValueError(f'{folder} was built with another describer configuration ({stored} != '
                             f'{_fingerprint(self.describer_cfg)}): its descriptors are not comparable')
        return index

    def _prototype_dataset(self):
        """The gallery dataset of a ``DataLoader`` prototype or of a dataloader / dataset config (only the dataset
        is used: images are described one by one, each rank its share)."""
        if isinstance(self.prototype, DataLoader):
            return self.prototype.dataset
        import copy

        from mmpretrain.registry import DATASETS
        cfg = copy.deepcopy(dict(self.prototype))
        cfg = cfg.get('dataset', cfg)
        return cfg if not isinstance(cfg, dict) else DATASETS.build(cfg)

    def _describe_dataset(self, dataset) -> np.ndarray:
        """Gallery descriptors of every dataset item, ranks sharing the images (rank r: items r, r + W, ...)."""
        from mmengine.dataset import pseudo_collate

        from mmpretrain.utils import track_on_main_process
        rank, world = dist.get_dist_info()
        mine = list(range(rank, len(dataset), world))
        size = int(getattr(self.describer, 'batch_size', 1))     # images per describer call (models batched)
        loader = DataLoader(dataset, batch_size=size, sampler=mine, collate_fn=pseudo_collate, num_workers=0)
        vecs = None
        self.eval()
        for start, batch in zip(range(0, len(mine), size), track_on_main_process(loader, 'Describe the gallery')):
            data = self.data_preprocessor(batch, False)
            feats = self.extract_feat(data['inputs'], data['data_samples'], role='gallery')
            if vecs is None:
                vecs = torch.zeros(len(dataset), feats.shape[-1])
            vecs[mine[start:start + len(feats)]] = feats
        if world > 1:
            dim = torch.tensor([0 if vecs is None else vecs.shape[1]])
            dist.all_reduce(dim, op='max')
            if vecs is None:
                vecs = torch.zeros(len(dataset), int(dim))
            dist.all_reduce(vecs)
        if vecs is None:
            raise ValueError('QVMaORetriever: the prototype (gallery) dataset is empty')
        return vecs.numpy()

    @torch.no_grad()
    def prepare_prototype(self) -> None:
        """Build or load the descriptor index of the gallery (see the class docstring for ``prototype``)."""
        proto = self.prototype
        if isinstance(proto, Tensor):
            vecs = proto.detach().float().cpu().numpy()
            index = self.build_index(vecs, [str(i) for i in range(len(vecs))])
        elif isinstance(proto, str):
            if osp.isdir(proto):
                index = self.load_index(proto)
            elif osp.isfile(proto):
                vecs = torch.load(proto, map_location='cpu', weights_only=True)
                if not isinstance(vecs, Tensor) or vecs.dim() != 2:
                    raise ValueError(f'{proto}: expected a saved [G, D] descriptor tensor')
                index = self.build_index(vecs.float().numpy(), [str(i) for i in range(len(vecs))])
            else:
                raise FileNotFoundError(f'QVMaORetriever: prototype not found: {proto!r} (an index folder of '
                                        'tools/mao/extract.py or a .pth descriptor file)')
        elif isinstance(proto, (dict, DataLoader)):
            dataset = self._prototype_dataset()
            paths = [dataset.get_data_info(i)['img_path'] for i in range(len(dataset))]
            cache = self.prototype_cache
            if cache and osp.isfile(osp.join(cache, 'index_meta.json')):
                index = self.load_index(cache)
                if list(index.paths) != paths:
                    raise ValueError(f'prototype_cache {cache} indexes other gallery images (or another order) than '
                                     f'the prototype dataset ({len(index.paths)} vs {len(paths)} images); delete it '
                                     'or point prototype_cache elsewhere')
            else:
                index = self.build_index(self._describe_dataset(dataset), paths)
                if cache and dist.is_main_process():
                    index.save(cache)
        elif proto is None:
            raise ValueError('QVMaORetriever: no prototype (gallery) given')
        else:
            raise TypeError(f'QVMaORetriever: unsupported prototype type {type(proto).__name__}')
        self.set_index(index)

    def dump_prototype(self, path: str) -> None:
        """Save the prototype: a ``.pth``/``.pt`` path gets the descriptor tensor (mmpretrain's format), any other
        path an index folder (``index.faiss`` + ``index_meta.json`` with the gallery paths)."""
        if not self.prototype_inited:
            self.prepare_prototype()
        if path.endswith(('.pth', '.pt')):
            index = self.prototype_index
            if not index.is_exact:
                raise ValueError('QVMaORetriever.dump_prototype: a .pth descriptor file needs an exact (flat) index; '
                                 'give a folder path to save the index itself')
            vecs = index.cpu_index.reconstruct_n(0, len(index))
            os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
            torch.save(torch.from_numpy(np.asarray(vecs)), path)
        else:
            self.prototype_index.save(path)
