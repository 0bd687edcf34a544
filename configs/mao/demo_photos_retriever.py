# MaO demo (configs/mao/demo_photos.py) as an mmpretrain retriever, QVMaORetriever: stage B in its feature
# extraction, the gallery descriptor index as its prototype store. Works with mmpretrain's tools and APIs:
#   python tools/test.py configs/mao/demo_photos_retriever.py none      (mAP, Recall@K)
#   from mmpretrain import ImageRetrievalInferencer
#   inferencer = ImageRetrievalInferencer('configs/mao/demo_photos_retriever.py', pretrained=False,
#                                         prototype=cfg.gallery_dataloader.dataset)   # or a list of image paths
#   inferencer('query_crop.png', topk=5)       # the query = the object crop (or pass the scene with query_box)
# The gallery index is read from WORK_DIR/index when present -- what `tools/mao/extract.py` writes for this config
# (same describer, same gallery order) -- otherwise the retriever describes the gallery itself and saves it there.
# The test split's `gt_label` = indices of the gallery images holding the query's instance (MaO relevance).
_base_ = './demo_photos.py'

work_dir = 'work_dirs/mao_demo_photos_retriever'
describer = {{_base_.model}}   # tools/mao/*.py read `describer` first: they index with the same settings
soir = dict(type='QVSoIRRetrievalDataset', ann_file={{_base_.dataset.ann_file}}, sets={{_base_.dataset.sets}},
            data_prefix={{_base_.dataset.data_prefix}})
# BGR uint8 at the image's own size (QVMaODataPreprocessor makes it RGB); pillow decodes as tools/mao/*.py do
test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),
    dict(type='PackInputs', meta_keys=('sample_idx', 'img_path', 'ori_shape', 'img_shape', 'query_box')),
]
# several images per forward through the retriever (the tools batch likewise)
loader = dict(batch_size=8, num_workers=0, persistent_workers=False, collate_fn=dict(type='pseudo_collate'),
              sampler=dict(type='DefaultSampler', shuffle=False))
gallery_dataloader = dict(**loader, dataset=dict(**soir, split='gallery', pipeline=test_pipeline))
test_dataloader = dict(**loader, dataset=dict(**soir, split='query', pipeline=test_pipeline))
model = dict(
    _delete_=True,
    type='QVMaORetriever',
    describer=describer,
    prototype=gallery_dataloader,
    prototype_cache=work_dir + '/index',
    index={{_base_.index}},
    topk=-1)    # rank the whole gallery (mAP over the full ranking, as MaO's protocol)
# mAP over the full ranking and Recall@K from pred_score / gt_label (mmpretrain's RetrievalRecall /
# RetrievalAveragePrecision read the same fields, but mmpretrain 1.2 calls numpy.in1d, removed in numpy 2.4)
test_evaluator = dict(type='QVRankedRetrievalMetric', topk=(1, 3, 5))
test_cfg = dict()
