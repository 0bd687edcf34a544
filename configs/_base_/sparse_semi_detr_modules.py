# Sparse Semi-DETR (CVPR 2024) modules, shared by configs/sparse_semi_detr/*.py, which inherit the Semi-DETR
# config of the same setting plus this file and set ``model = _base_.sparse_semi_detr``.
# Defaults = the paper's best ablation rows (README "Sparse Semi-DETR", "Configs (supplement Table 8)"):
# attention on the high-resolution branch (supp. Table 10 d), similarity selection on (Table 11), no MLP (Table 5c),
# refinement on weak-view features, refined queries in the student only (Table 5b), m = 6 groups x top-4 (Table 6
# a/b), tau = 0.4 (Table 6c = semi_train_cfg.cls_pseudo_thr). Ablation 5(a): set qrm_cfg and/or rpfm_cfg to None.
# Defaults not in the paper (issue 13, README "Sparse Semi-DETR"): kept refined queries ranked by teacher confidence,
# class embedding in the refined content, t-hat normalised per box, Semi-DETR's NMS(0.6) kept in the one-to-one
# stage with a cross-class duplicate filter on top.
sparse_semi_detr = dict(
    type='QVSparseSemiDETR',
    # refined queries reuse Semi-DETR's consistency machinery (5 groups, loss weight 10) without its
    # RoI extractor + projector (the QRM makes the content)
    consistency_cfg=dict(_delete_=True, num_groups=5, loss_weight=10.0),
    qrm_cfg=dict(
        type='QVQueryRefinementModule',
        refine_view='weak',  # Table 5(b): weak-view (teacher-side) features; 'strong' = student features
        refined_into='student',  # Table 5(b): student only 44.3 vs both 42.8; 'both' = also the teacher's queries
        label_in_query=True,  # Sec. 4.1 "query label features": + class embedding of the pseudo label
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
        keep_ratio=0.5,  # fewer refined queries: the best-ranked half of each image's boxes
        select_by='teacher_score',  # rank by teacher confidence; 'similarity' = cross-resolution agreement
        with_mlp=False),  # Table 5(c)
    rpfm_cfg=dict(
        num_groups=6,  # Table 6(a)
        topk=4,  # Table 6(b)
        t_hat_norm='box',  # 'box': QFL targets normalised over all m*k positives of a box; 'group': per group
        o2o_pseudo_nms=True,  # one-to-one stage keeps Semi-DETR's NMS(0.6) (False: NMS-free, filter only)
        dup_iou_thr=0.7,  # then drops confident candidates overlapping a higher-scored one above this IoU
        dup_class_agnostic=True,  # ... of any class (False: same class only)
        apply_to_labeled=False))
