"""Analysis by synthesis: refine estimated joints so that Gen(J) looks like the crop.

    joints = refine_poses(gen, crops, est.predict_norm(crops), steps=10)

The pose network gives J0; a few Adam steps on J (the generator frozen, in eval mode) then lower

    E(J) = sum_p w_p (Gen(J)_p - x_p)^2 / sum_p w_p  +  prior_weight * mean_j ||J_j - J0_j||^2

per crop, with x the crop (B, 1, S, S) in [-1, 1], J normalised joints (B, J, 3) and weights
w_p = 1 inside the hand region of J0 (``fidelity.training_hand_mask``: pixels within 20 mm of a
bone of J0, orthographic) and ``background_weight`` (0.1) elsewhere. The region is fixed at J0 so
it does not chase the estimate; the low weight outside it keeps fingers that J0 missed in play.
The prior keeps J near the network's answer where the generator is unfaithful (a generator that
ignores a joint gives no gradient for it, and the prior holds it at J0).

Each crop's problem is independent (the loss is a sum over crops and Adam's state is per
element), so a batch refines exactly as its crops would one by one.
"""
from __future__ import annotations

import torch
from torch import nn

from handgan.fidelity import training_hand_mask
from handgan.preprocess import DEFAULT_CUBE_MM

# The best of benchmarks/refine_grid.py's grid on crops a quick-preset generator drew itself (a
# faithful generator by construction: 16.0 -> 14.2 mm in 10 steps from J + 10 mm noise). On real
# crops that generator (not faithful) makes every setting worse; see docs/inference.md.
DEFAULT_LR = 0.01  # Adam moves a joint coordinate at most ~lr a step: 1.5 mm of a 300 mm cube
DEFAULT_PRIOR_WEIGHT = 1.0
BACKGROUND_WEIGHT = 0.1


def refine_poses(gen: nn.Module, crops: torch.Tensor, init_joints: torch.Tensor, steps: int,
                 lr: float = DEFAULT_LR, prior_weight: float = DEFAULT_PRIOR_WEIGHT,
                 background_weight: float = BACKGROUND_WEIGHT, cube_mm: float = DEFAULT_CUBE_MM,
                 rays: torch.Tensor | None = None) -> torch.Tensor:
    """Refine (B, J, 3) normalised joints on their (B, 1, S, S) crops by ``steps`` Adam steps.

    Per crop x it lowers, over J (Adam on J alone)::

        E(J) = sum_p w_p (Gen(J)_p - x_p)^2 / sum_p w_p + prior_weight * mean_j ||J_j - J0_j||^2

    with w_p = 1 in the hand region of J0 (``fidelity.training_hand_mask``) and
    ``background_weight`` elsewhere; the loss of a batch is the sum over its crops.

    Args:
        gen: the generator (joints -> crop). Used in eval mode with its weights frozen; its mode
            and ``requires_grad`` flags are restored afterwards, and it gets no gradients.
        crops: (B, 1, S, S) normalised crops, S = the generator's size.
        init_joints: (B, J, 3) J0, the pose network's normalised estimate.
        steps: Adam steps (0 returns J0).
        lr: Adam's learning rate (normalised joint units; 0.01 is 1.5 mm of a 300 mm cube).
        prior_weight: weight of the pull towards J0 (see the module docstring's formula).
        background_weight: pixel weight outside J0's hand region (1 inside).
        cube_mm: the crop cube's x side, which sets the 20 mm hand radius in px.
        rays: (B, 3) the crops' centre rays (:func:`handgan.preprocess.centre_rays`), for a
            generator that renders the skeleton; None: centred on the optical axis.

    Returns:
        (B, J, 3) refined joints, detached, on ``init_joints``' device and dtype.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    j0 = init_joints.detach()
    if steps == 0 or len(j0) == 0:
        return j0.clone()
    size = gen.cfg.size
    if crops.shape[1:] != (1, size, size) or len(crops) != len(j0):
        raise ValueError(f"crops must be ({len(j0)}, 1, {size}, {size}), got {tuple(crops.shape)}")
    was_training = gen.training
    flags = [p.requires_grad for p in gen.parameters()]
    gen.eval().requires_grad_(False)
    try:
        # Under an Estimator's inference_mode too: tensors made (or cloned) here are normal
        # tensors that autograd may save.
        with torch.inference_mode(False), torch.enable_grad():
            x = crops.detach().float().clone()
            start = j0.float().clone()
            w = background_weight + (1.0 - background_weight) * training_hand_mask(
                start, size, cube_mm)  # (B, 1, S, S): 1 in J0's hand region
            w_sum = w.sum(dim=(1, 2, 3))  # (B,)
            joints = start.clone().requires_grad_(True)
            opt = torch.optim.Adam([joints], lr=lr)
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                drawn = gen(joints, rays, clean=True)  # no random missing pixels
                data = (w * (drawn - x).pow(2)).sum(dim=(1, 2, 3)) / w_sum  # (B,)
                prior = (joints - start).pow(2).sum(-1).mean(-1)  # (B,) mean over joints
                (data + prior_weight * prior).sum().backward()  # sum: crops stay independent
                opt.step()
    finally:
        gen.train(was_training)
        for p, flag in zip(gen.parameters(), flags):
            p.requires_grad_(flag)
    return joints.detach().to(init_joints.dtype)

