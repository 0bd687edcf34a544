"""Cost-based pseudo-label mining (Semi-DETR's GMM over matching costs)."""
from typing import List, Optional, Sequence

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_world_size
from mmengine.structures import InstanceData
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def matched_costs(match_costs: Sequence, pred_instances: InstanceData, gt_instances: InstanceData,
                  img_meta: dict) -> Tensor:
    """Hungarian-match predictions to (pseudo) ground truths and return each ground truth's cost.

    Args:
        match_costs: mmdet match-cost objects (e.g. ``HungarianAssigner.match_costs``).
        pred_instances (InstanceData): ``scores`` (logits, N x C) and ``bboxes`` (N x 4, abs xyxy).
        gt_instances (InstanceData): ``bboxes`` (G x 4, abs xyxy) and ``labels`` (G,).

    Returns:
        Tensor: (G,) matched cost of every ground truth (``inf`` if there are fewer predictions).
    """
    num_gt = len(gt_instances)
    if num_gt == 0:
        return pred_instances.bboxes.new_zeros((0, ))
    cost = sum(c(pred_instances=pred_instances, gt_instances=gt_instances, img_meta=img_meta) for c in match_costs)
    cost_np = cost.detach().float().cpu().numpy()
    if not np.isfinite(cost_np).all():
        raise FloatingPointError(
            f'cost-based pseudo-label mining: the matching cost has NaN/Inf entries for image '
            f'{img_meta.get("img_path", img_meta.get("img_id", "?"))} (non-finite student predictions: the model has '
            'diverged or its weights were never initialised)')
    rows, cols = linear_sum_assignment(cost_np)
    out = np.full((num_gt, ), np.inf, dtype=np.float64)
    out[cols] = cost_np[rows, cols]
    return torch.as_tensor(out, dtype=torch.float32, device=pred_instances.bboxes.device)


def gmm_cost_threshold(costs: np.ndarray, seed: int = 0) -> Optional[float]:
    """Fit a 2-component 1-D GMM to matching costs and return the low-cost cluster's threshold.

    Follows Semi-DETR ``_fit_gmm``: diagonal covariance, means initialised at (min, max), equal weights,
    unit precisions, ``reg_covar=1e-5``. The threshold is the cost of the sample with the highest
    log-likelihood among those assigned to component 0 (the low-cost one); component 1 if 0 is empty.

    Returns:
        float or None: the threshold; None without any finite cost. With one distinct value (a single
        cost, or all equal) every cost is kept, as the official fit does.
    """
    from sklearn.mixture import GaussianMixture

    costs = np.asarray(costs, dtype=np.float64).reshape(-1)
    costs = costs[np.isfinite(costs)]
    if costs.size == 0:
        return None
    if costs.size == 1 or np.ptp(costs) == 0:
        return float(costs.max())
    gmm = GaussianMixture(
        n_components=2,
        covariance_type='diag',
        means_init=[[costs.min()], [costs.max()]],
        weights_init=[0.5, 0.5],
        precisions_init=[[1.0], [1.0]],
        reg_covar=1e-5,
        random_state=seed)
    x = costs[:, None]
    gmm.fit(x)
    assign = gmm.predict(x)
    log_lik = gmm.score_samples(x)
    for comp in (0, 1):
        sel = assign == comp
        if sel.any():
            return float(costs[sel][np.argmax(log_lik[sel])])
    return None


def gather_costs(local: List[Tensor]) -> np.ndarray:
    """Concatenate matched costs of this rank and, in distributed runs, of all ranks."""
    flat = torch.cat(local).cpu().numpy() if local else np.zeros((0, ), dtype=np.float32)
    if get_world_size() > 1:
        flat = np.concatenate(all_gather_object(flat))
    return flat
