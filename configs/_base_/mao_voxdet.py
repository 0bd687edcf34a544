# MaO on VoxDet-SoIR (RoboTools test split: 20 instances, 1,580 gallery images): OWLv2 objectness proposals
# (threshold 0.2, NMS 0.4), SAM ViT-H box masks, object-centred crops (side >= the encoder's input size), stage B
# multi-object attention optimisation (one vector per image, 80 AdamW steps, lr 0.1, alpha 0.03, LeGrad on the last
# block), exact inner-product FAISS search over the whole gallery. Local weights only (see README, "MaO").
# queryvision_mm.mmpretrain_plugin: QKS / MaO modules in mmpretrain's registries (queryvision_mm/mmpretrain_plugin.py);
# queryvision_mm.safe_load: applies the safe (weights_only) checkpoint-loading shim (queryvision_mm/safe_load.py)
custom_imports = dict(imports=['queryvision_mm.mmpretrain_plugin', 'queryvision_mm.safe_load'],
                      allow_failed_imports=False)
default_scope = 'mmpretrain'

data_root = 'data/VoxDet-SoIR/'
owlv2_dir = 'checkpoints/owlv2-base-patch16-ensemble'   # Owlv2ForObjectDetection.save_pretrained() folder
sam_checkpoint = 'checkpoints/sam_vit_h_4b8939.pth'

model = dict(
    type='QVMaODescriber',
    encoder=dict(),   # set by each config
    proposals=dict(type='QVOWLv2Objectness', model_dir=owlv2_dir, score_thr=0.2, nms_iou=0.4),
    masks=dict(type='QVSAMBoxMasks', checkpoint=sam_checkpoint, model_type='vit_h'),
    refine=dict(mode='paper', iters=80, lr=0.1, alpha=0.03, layers='last'))
# anns.pt from pihash2k/VoxDet-SoIR create_dataset.py; its paths are absolute paths of the machine that wrote it:
# set path_strip to that prefix and data_prefix to where the images are here
dataset = dict(type='QVSoIRDataset', ann_file=data_root + 'anns.pt', sets=('RoboTools', ), path_strip=None,
               data_prefix='')
# exact inner-product search (the paper's protocol, benchmark mAP); GPU FAISS when installed, else faiss-cpu. Millions
# of gallery images: an approximate FAISS index, e.g. type='hnsw', M=32, efConstruction=64, efSearch=256 or
# type='ivf_sq8', nlist=2048, quantizer='hnsw', nprobe=64 (utils/ann_index.py; docs/benchmarks.md "MaO search at
# scale"); mAP in results.json is always computed from the exact full ranking.
index = dict(type='flat', use_gpu=True)
evaluation = dict(topk=(1, 5, 10))
