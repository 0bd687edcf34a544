"""Shrink a shipped CQ-DINO config's model for CPU tests: same backbone type, ``out_indices``, ``with_cp``, feature
levels, relation type and losses as the real config; fewer / narrower layers, 10 categories, K = 4."""
import copy

import torch
from mmdet.testing import demo_mm_inputs

NUM_CLASSES, K = 10, 4


def shrink_cq_dino_model(model_cfg, num_classes: int = NUM_CLASSES, topk: int = K):
    m = copy.deepcopy(model_cfg)
    bb = m.backbone
    if bb.type == 'SwinTransformer':
        bb.update(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], drop_path_rate=0.0, init_cfg=None)
        widths = [16 * 2**i for i in range(4)]
    else:  # ResNet
        bb.update(depth=18, init_cfg=None)
        widths = [64 * 2**i for i in range(4)]
    m.neck.in_channels = [widths[i] for i in bb.out_indices]
    m.num_queries = 20
    m.encoder.num_layers = 1
    m.encoder.num_cp = min(m.encoder.get('num_cp', 0), 1)
    m.decoder.num_layers = 1
    m.dn_cfg.group_cfg = dict(dynamic=True, num_groups=None, num_dn_queries=10)
    sel = m.language_model
    sel.update(num_classes=num_classes, img_in_channels=widths[-1], embed_dims=32, kv_dims=16, num_layers=1,
               num_heads=2, ffn_dims=64, topk=topk, embed_file=None)
    if sel.relation is not None and sel.relation.type == 'QVCategorySelfAttention':
        sel.relation.update(embed_dims=32, num_heads=2)
    else:
        sel.relation = None  # the 13,204-category tree file is not shipped (relations are tested elsewhere)
    m.hierarchy = None
    m.bbox_head.contrastive_cfg.max_text_len = topk
    m.test_cfg = dict(max_per_img=10)
    return m


def cq_dino_batch(model, labels=((1, 7, 7), (3, )), shape=(3, 96, 128)):
    d = demo_mm_inputs(len(labels), [list(shape)] * len(labels), num_items=[len(lb) for lb in labels],
                       num_classes=NUM_CLASSES)
    for s, lb in zip(d['data_samples'], labels):
        s.gt_instances.labels = torch.tensor(lb)
    return d
