"""One training step: the seed's GAN step (update Dis, then Gen) or the supervised baseline's.

The objectives, with L_J the joint loss, L_gan the real/fake BCE and L_recons the reconstruction
loss (``losses.py`` has each formula and sign):

    (1) Dis:  L_Dis = w_joint * L_J(Dis_pose(x_l), J_l) + w_gan * L_gan
                      [+ w_synth * L_synth on pairs (Gen(J'), J')]  [+ w_equivariance * L_equi]
    (2) Gen:  L_Gen = w_recons * L_recons(x_l, Gen(J_l)) + w_gen_adv * BCE(Dis(Gen(J)), 1)

Unlabelled crops x_u never reach L_J: they go through the real/fake head, and (options) train the
pose branch without labels through the equivariance term or become new poses J' for L_synth.
``gen`` and ``dis`` may be DistributedDataParallel wrappers; the steps call them through
``forward`` so that DDP sees every use.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from handgan.batches import Batch
from handgan.config import LossConfig, TrainConfig
from handgan.fidelity import training_hand_mask
from handgan.losses import (
    discriminator_gan_loss,
    generator_adversarial_loss,
    joint_loss,
    reconstruction_loss,
)
from handgan.posespace import new_poses
from handgan.preprocess import DEFAULT_CUBE_MM
from handgan.views import ViewMaps

# The losses a step returns, in the order they are logged.
LOSS_NAMES = ("loss_dis", "loss_joint", "loss_gan", "loss_gen", "loss_recons", "loss_gen_adv",
              "loss_equivariance", "loss_synth")


@dataclass(frozen=True)
class StepPhase:
    """What a GAN step includes at this point of the schedule (see :func:`step_phase`)."""

    gen_adversarial: bool = True  # Gen's adversarial term (off during the reconstruction warm-up)
    synth_weight: float = 0.0     # weight of the skeleton-space term L_synth now


def step_phase(loss: LossConfig, step: int, steps_per_epoch: int) -> StepPhase:
    """The phase of step ``step`` (0-based): a pure function of the step, so resume is exact.

    Gen trains on L_recons alone for ``gen_warmup_epochs``; L_synth is off while Gen warms up,
    then its weight ramps linearly from 0 to ``w_synth`` over ``synth_ramp_epochs`` (Gen's crops
    of new poses start poor, and a pose head trained hard on them early learns Gen's errors).
    """
    epoch = step / max(steps_per_epoch, 1)
    warm = epoch < loss.gen_warmup_epochs
    weight = 0.0
    if loss.w_synth > 0 and not warm:
        since = epoch - loss.gen_warmup_epochs
        ramp = 1.0 if loss.synth_ramp_epochs <= 0 else min(1.0, since / loss.synth_ramp_epochs)
        weight = loss.w_synth * ramp
    return StepPhase(gen_adversarial=not warm, synth_weight=weight)


def gan_step(gen: nn.Module, dis: nn.Module, opt_g: torch.optim.Optimizer,
             opt_d: torch.optim.Optimizer, batch: Batch, cfg: TrainConfig,
             phase: StepPhase = StepPhase(), autocast=nullcontext) -> dict[str, torch.Tensor]:
    """One iteration of the seed's GAN: update Dis, then Gen. Returns the losses (0-dim tensors,
    read on the host only when logged: no device sync per step).

    ``phase`` (:func:`step_phase`) switches Gen's adversarial term on after the warm-up and weighs
    the skeleton-space term: new poses J' (:func:`synth_targets`) rendered by Gen, whose pairs
    (Gen(J'), J') train the pose head and whose crops are fakes for the real/fake head.
    """
    w = cfg.loss
    x_l, j_l, x_u, views, ray_l = batch
    ############################
    # (1) Update Dis: minimise L_Dis = w_joint * L_J(Dis_pose(x_l), J_l) + w_gan * L_gan,
    #     L_gan = BCE(Dis(x_l, x_u), 1) + BCE(Dis(Gen(J)), 0)
    ############################
    opt_d.zero_grad(set_to_none=True)
    has_u = x_u is not None and len(x_u) > 0
    equivariance = w.w_equivariance > 0 and has_u and views is not None
    synth = phase.synth_weight > 0
    synth_sources = [x for x in w.synth_pose_sources if x != "unlabeled"]
    synth_from_u = synth and has_u and "unlabeled" in w.synth_pose_sources
    j_syn = None  # new poses J' for L_synth, rendered by Gen in both updates
    with autocast():
        real_logits, pose_l = dis(x_l)  # labelled crops: both heads
        if equivariance or synth_from_u:
            logits_u, pose_u = dis(x_u)
            real_logits = torch.cat([real_logits, logits_u])
        elif has_u:
            real_logits = torch.cat([real_logits, dis(x_u, heads="real_fake")])  # real/fake only
        if synth:
            j_syn = synth_targets(j_l, pose_u if synth_from_u else None, synth_sources,
                                  w.synth_turn_deg)
            synth = len(j_syn) > 0
            j_syn = j_syn if synth else None
        j_gen = torch.cat([j_l, j_syn]) if synth else j_l
        with torch.no_grad():  # no gradient into Gen here
            x_g = gen(j_gen, ray=rays_for(ray_l, len(j_gen)))
        if equivariance:
            loss_equi = equivariance_loss(dis, pose_u, views)
        with batch_norm_stats_frozen(dis):  # running statistics come from real crops only
            if synth:
                fake_logits, pose_g = dis(x_g)
            else:
                fake_logits = dis(x_g, heads="real_fake")
        loss_j = joint_loss(pose_l.float(), j_l)
        loss_gan = discriminator_gan_loss(real_logits.float(), fake_logits.float())
        loss_d = w.w_joint * loss_j + w.w_gan * loss_gan
        if synth:
            loss_synth = joint_loss(pose_g[len(j_l):].float(), j_syn)  # L_J on (Gen(J'), J')
            loss_d = loss_d + phase.synth_weight * loss_synth
        if equivariance:
            loss_d = loss_d + w.w_equivariance * loss_equi
    loss_d.backward()
    opt_d.step()
    losses = {"loss_dis": loss_d, "loss_joint": loss_j, "loss_gan": loss_gan}
    if equivariance:
        losses["loss_equivariance"] = loss_equi
    if synth:
        losses["loss_synth"] = loss_synth

    ############################
    # (2) Update Gen: minimise L_Gen = w_recons * L_recons(x_l, Gen(J_l))
    #                                + w_gen_adv * BCE(Dis(Gen(J_l [, J'])), 1)
    #     i.e. L_recons - L_gan in the non-saturating form -log Dis(Gen(J)) (see losses.py).
    #     L_recons compares the clean crop of each labelled pose; Dis sees Gen's crops with the
    #     sensor's missing pixels.
    ############################
    losses |= update_generator(gen, dis, opt_g, x_l, j_l, j_syn, ray_l, cfg, phase, autocast)
    return {name: losses[name].detach() for name in LOSS_NAMES if name in losses}


def update_generator(gen: nn.Module, dis: nn.Module, opt_g: torch.optim.Optimizer,
                     x_l: torch.Tensor, j_l: torch.Tensor, j_syn: torch.Tensor | None,
                     ray_l: torch.Tensor | None, cfg: TrainConfig, phase: StepPhase,
                     autocast=nullcontext) -> dict[str, torch.Tensor]:
    """:func:`gan_step`'s phase (2), after Dis's update: Gen's losses."""
    w = cfg.loss
    opt_g.zero_grad(set_to_none=True)
    adversarial = phase.gen_adversarial and w.w_gen_adv > 0
    with autocast():
        # Without the adversarial term only the labelled poses' crops carry a loss.
        j_gen = torch.cat([j_l] + ([j_syn] if j_syn is not None else [])) if adversarial else j_l
        x_clean = gen(j_gen, ray=rays_for(ray_l, len(j_gen)), clean=True)
        loss_rec = reconstruction_loss(x_l, x_clean[:len(j_l)].float(), w.tau, w.recons_mode,
                                       recons_weight(j_l, cfg))
        loss_g = w.w_recons * loss_rec
        loss_adv = torch.zeros((), device=x_l.device)
        if adversarial:
            # Dis without its DDP wrapper: its gradients here are cleared before its next step.
            x_g, d = unwrap(gen).sensor(x_clean), unwrap(dis)
            with batch_norm_stats_frozen(dis):
                loss_adv = generator_adversarial_loss(d(x_g, heads="real_fake").float())
            loss_g = loss_g + w.w_gen_adv * loss_adv
    loss_g.backward()
    opt_g.step()
    return {"loss_gen": loss_g, "loss_recons": loss_rec, "loss_gen_adv": loss_adv}


def supervised_step(dis: nn.Module, opt_d: torch.optim.Optimizer, batch: Batch,
                    cfg: TrainConfig, autocast=nullcontext) -> dict[str, torch.Tensor]:
    """The baseline: the same pose network (Dis trunk + pose branch) trained on L_J alone (plus
    the equivariance term, with ``loss.w_equivariance`` and unlabelled crops with ``views``)."""
    x_l, j_l, x_u, views, _ = batch
    ############################
    # Update Dis trunk + pose: minimise w_joint * L_J(Dis_pose(x_l), J_l)
    ############################
    opt_d.zero_grad(set_to_none=True)
    has_u = x_u is not None and len(x_u) > 0
    equivariance = cfg.loss.w_equivariance > 0 and has_u and views is not None
    with autocast():
        loss_j = joint_loss(dis(x_l, heads="pose").float(), j_l)
        loss = cfg.loss.w_joint * loss_j
        if equivariance:
            pose_u = dis(x_u, heads="pose")
            loss_equi = equivariance_loss(dis, pose_u, views)
            loss = loss + cfg.loss.w_equivariance * loss_equi
    loss.backward()
    opt_d.step()  # the real/fake head has no gradient, so Adam leaves it as it is
    out = {"loss_dis": loss.detach(), "loss_joint": loss_j.detach()}
    if equivariance:
        out["loss_equivariance"] = loss_equi.detach()
    return out


def equivariance_loss(dis: nn.Module, pose_b: torch.Tensor,
                      views: tuple[torch.Tensor, ViewMaps], on_device: bool | None = None
                      ) -> torch.Tensor:
    """||Dis_pose(x_b) - map(Dis_pose(x_a))||^2 on unlabelled crops: x_b is an augmented copy of
    x_a, and ``map`` carries A's pose into B's crop frame exactly as augmentation carries labels.
    The target is the network's own (fixed) pose on the unaugmented crop, clipped to the crop
    cube: no label is used. The map runs on the host (numpy, as augmentation does) on the CPU,
    and on the device on a GPU (``on_device`` forces either way): there the host would wait for
    the pose and then map crop by crop."""
    x_a, maps = views
    net = unwrap(dis)
    training = net.training
    # The target normalises with the batch's statistics, as the student does; the running
    # statistics do not move.
    net.train()
    try:
        with torch.no_grad(), batch_norm_stats_frozen(net):
            pose_a = net(x_a, heads="pose").float()
    finally:
        net.train(training)
    # The crop is centred on the hand, so its joints lie inside the cube ([-1, 1] normalised).
    # Clipping the target there keeps a wild prediction (few labels, early training) from
    # becoming a wild target: mapped through the camera projection, a joint far outside the
    # cube can land anywhere, and such targets fed back on themselves made runs diverge.
    if pose_b.is_cuda if on_device is None else on_device:
        target = maps.apply_on_device(pose_a.clamp(-1.0, 1.0))
    else:
        target = maps.apply(np.clip(pose_a.cpu().numpy(), -1.0, 1.0))
    return joint_loss(pose_b.float(), torch.as_tensor(target, dtype=torch.float32,
                                                      device=pose_b.device))


def recons_weight(joints: torch.Tensor, cfg: TrainConfig) -> torch.Tensor | None:
    """Per-pixel weights of L_recons: ``loss.w_hand`` in the hand region of ``joints``, 1
    elsewhere (None when w_hand = 1)."""
    if cfg.loss.w_hand == 1.0:
        return None
    mask = training_hand_mask(joints.detach().float(), cfg.model.size,
                              cfg.data.cube_mm or DEFAULT_CUBE_MM)
    return 1.0 + (cfg.loss.w_hand - 1.0) * mask


def synth_targets(j_l: torch.Tensor, pose_u: torch.Tensor | None,
                  sources: list[str], max_turn_deg: float) -> torch.Tensor:
    """New poses J' (fixed) for the skeleton-space term: drawn from the labelled poses, plus
    the poses Dis reads off the unlabelled crops (clipped to the crop cube) when given."""
    j_new = [new_poses(j_l.float(), sources, max_turn_deg)] if sources else []
    if pose_u is not None:
        j_new.append(pose_u.detach().float().clamp(-1.0, 1.0))
    return torch.cat(j_new) if j_new else j_l[:0]


def rays_for(ray_l: torch.Tensor | None, count: int) -> torch.Tensor | None:
    """Centre rays for ``count`` poses rendered beside the labelled ones: the labelled crops'
    rays, repeated in order (a new pose is drawn as if seen where a real crop was)."""
    if ray_l is None or count == len(ray_l):
        return ray_l
    return ray_l.repeat(-(-count // len(ray_l)), 1)[:count]


@contextmanager
def batch_norm_stats_frozen(module: nn.Module):
    """Batch norm normalises with the batch's statistics but does not fold them into its running
    statistics: Dis sees generated crops in training mode, and running statistics that mix them
    with real crops made the pose estimate in eval mode swing from epoch to epoch."""
    layers = [m for m in unwrap(module).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum


def unwrap(module: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (or the module itself)."""
    return module.module if isinstance(module, DDP) else module
