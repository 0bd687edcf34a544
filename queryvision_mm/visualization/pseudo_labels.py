"""Teacher pseudo-labels beside student predictions, as one PNG (used by the demo)."""
import os.path as osp
from typing import List, Optional, Sequence

import numpy as np
import torch


def draw_pseudo_label_grid(images: Sequence[np.ndarray], pseudo: Sequence, preds: Sequence, classes: Sequence[str],
                           out_file: str, pred_score_thr: float = 0.3, titles: Optional[List[str]] = None,
                           pseudo_thr: float = 0.4) -> str:
    """Draw one row per image: teacher pseudo-labels (left) and student predictions (right).

    Teacher candidates with ``score >= pseudo_thr`` (those that enter the detection loss) are drawn
    solid; the other candidates (consistency-query material) dashed.

    Args:
        images: RGB uint8 arrays (H, W, 3) in the network-input frame.
        pseudo / preds: objects with ``bboxes`` (N, 4 xyxy), ``labels``, ``scores`` (tensors or arrays).
        classes: class names.
        out_file: PNG path (folders are created).
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from mmengine.utils import mkdir_or_exist

    colors = plt.get_cmap('tab10')
    rows = len(images)
    fig, axes = plt.subplots(rows, 2, figsize=(7, 3.4 * rows), squeeze=False)
    for r, (img, ps, pr) in enumerate(zip(images, pseudo, preds)):
        for c, (inst, head) in enumerate(((ps, 'teacher pseudo-labels'), (pr, 'student predictions'))):
            ax = axes[r][c]
            ax.imshow(img)
            ax.set_axis_off()
            boxes = np.asarray(_np(inst.bboxes)).reshape(-1, 4)
            labels = np.asarray(_np(inst.labels)).reshape(-1)
            scores = np.asarray(_np(inst.scores)).reshape(-1)
            if c == 1:
                keep = scores >= pred_score_thr
                boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
            for (x1, y1, x2, y2), lab, sc in zip(boxes, labels, scores):
                col = colors(int(lab) % 10)
                style = '-' if (c == 1 or sc >= pseudo_thr) else '--'
                ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=col, linewidth=1.5,
                                           linestyle=style))
                ax.text(x1, y1, f'{classes[int(lab)]} {sc:.2f}', color='white', fontsize=6,
                        bbox=dict(facecolor=col, alpha=0.7, pad=0.5, linewidth=0))
            title = head if titles is None else f'{titles[r]}: {head}'
            if c == 1:
                title += f' (>= {pred_score_thr}) [{len(boxes)}]'
            else:
                title += f' [{int((scores >= pseudo_thr).sum())} >= {pseudo_thr}, {len(boxes)} candidates]'
            ax.set_title(title, fontsize=8)
    fig.tight_layout()
    mkdir_or_exist(osp.dirname(osp.abspath(out_file)))
    fig.savefig(out_file, dpi=110)
    plt.close(fig)
    return out_file


def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


@torch.no_grad()
def run_pseudo_label_visualization(model, dataset, out_file: str, num_images: int = 4,
                                   pred_score_thr: float = 0.3) -> str:
    """Run a :class:`QVSemiDETR` model on the first ``num_images`` of ``dataset`` (a test-style
    pipeline) and draw the teacher's candidates (solid: set A, which enters the loss) beside the
    student's predictions."""
    model.eval()
    classes = dataset.metainfo['classes']
    images, pseudo, preds, titles = [], [], [], []
    for idx in range(min(num_images, len(dataset))):
        item = dataset[idx]
        data = model.data_preprocessor(dict(inputs=[item['inputs']], data_samples=[item['data_samples']]), False)
        inputs, samples = data['inputs'], data['data_samples']
        ps = model.teacher_pseudo_labels(inputs, samples)[0]
        pr = model.student.predict(inputs, samples, rescale=False)[0].pred_instances
        raw = item['inputs']  # uint8 (3, H, W), BGR as loaded
        img = raw.permute(1, 2, 0).numpy()[..., ::-1]
        images.append(np.ascontiguousarray(img))
        pseudo.append(ps)
        preds.append(pr)
        titles.append(osp.basename(samples[0].img_path))
    return draw_pseudo_label_grid(images, pseudo, preds, classes, out_file, pred_score_thr, titles,
                                  pseudo_thr=model.semi_train_cfg.cls_pseudo_thr)
