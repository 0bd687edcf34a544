# Sparse Semi-DETR (CVPR 2024) modules, shared by configs/sparse_semi_detr/*.py, which inherit the Semi-DETR
# config of the same setting plus this file and set ``model = _base_.sparse_semi_detr``.
# Defaults = the paper's best ablation rows (README "Sparse Semi-DETR"; spec sparse_semi_detr.md "§5 paper text"):
# attention on the high-resolution branch (supp. Table 10 d), similarity selection on (Table 11), no MLP (Table 5c),
# refinement on weak-view features fed with the original queries (Table 5b), m = 6 groups x top-4 (Table 6 a/b),
# tau = 0.4 (Table 6c = semi_train_cfg.cls_pseudo_thr). Ablation 5(a): set qrm_cfg and/or rpfm_cfg to None.
sparse_semi_detr = dict(
    type='QVSparseSemiDETR',
    # refined queries reuse Semi-DETR's consistency machinery (5 groups, loss weight 10) without its
    # RoI extractor + projector (the QRM makes the content)
    consistency_cfg=dict(_delete_=True, num_groups=5, loss_weight=10.0),
    qrm_cfg=dict(
        type='QVQueryRefinementModule',
        refine_view='weak',  # Table 5(b): weak-view (teacher-side) features; 'strong' = student features
        in_channels=256,
        out_dims=256,
        roi_size=7,
        featmap_strides=[8, 16, 32, 64],
        high_res_level=0,  # stride 8: low-level, fine detail
        low_res_level=2,  # stride 32: high-level, abstract shape
        reduced_channels=64,
        num_heads=8,
        attention_on='high_res',  # 'high_res' | 'low_res' | 'both' | 'none' (supp. Table 10)
        similarity=True,  # supp. Table 11
        keep_ratio=0.5,  # fewer refined queries: the best-agreeing half of each image's boxes
        with_mlp=False),  # Table 5(c)
    rpfm_cfg=dict(num_groups=6, topk=4, dup_iou_thr=0.7, nms_free_o2o=True, apply_to_labeled=False))
