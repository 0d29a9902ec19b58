"""The seed's losses, with the sign conventions of the mission spec.

* L_gan: binary cross-entropy of the real/fake head, real crops -> 1, generated -> 0. A positive
  loss the discriminator minimises (the seed writes log Dis(x) + log(1 - Dis(Gen(J)))).
* L_Dis = L_J + L_gan.
* L_Gen = L_recons - L_gan, written in the usual non-saturating form: the generator minimises
  L_recons + BCE(Dis(Gen(J)), 1) = L_recons - log Dis(Gen(J)), which has the same optimum as
  maximising L_gan but does not vanish when the discriminator wins.
* L_recons: the seed writes it as a squared norm, a sum over pixels ("pixel_sum"): the per-pixel
  mean ("sample_floor", the first implementation, errors under the sensor-noise floor tau giving
  no gradient) scales it down by S^2 against L_gan, and Gen then learned almost nothing from it
  (docs/results.md). :func:`reconstruction_loss` lists the modes.
* L_J = (1/N) sum_i ||Dis_pose(X_i) - J_i||^2 on labelled crops (sum over the J x 3 coordinates).

Pixel errors are in normalised depth units: 1.0 = half the crop cube (150 mm for a 300 mm cube).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def discriminator_gan_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_gan = BCE(Dis(x), 1) + BCE(Dis(Gen(J)), 0), each averaged over its batch."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's "-L_gan" term in non-saturating form: -log Dis(Gen(J)) = BCE(., 1)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def reconstruction_loss(real: torch.Tensor, generated: torch.Tensor, tau: float,
                        mode: str = "sample_floor", weight: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """L_recons between real crops and Gen(their joints), both (B, 1, S, S).

    mode "sample_floor": mean_i max(mean_p (x - g)^2, tau)  (per-pixel mean, floored per sample);
    mode "pixel_truncate": mean_i mean_p min((x - g)^2, tau)  (tau is then per pixel);
    mode "pixel_sum": mean_i sum_p w_ip min((x - g)^2, tau)  (the seed's squared norm; ``weight``
    (B, 1, S, S) emphasises pixels, e.g. the hand region);
    mode "pixel_l1": mean_i sum_p w_ip min(|x - g|, tau)  (where a finger's place is uncertain by a
    pixel or two, the squared error's optimum is a blur of hand and background depths, the
    absolute error's the likelier of the two, a sharp edge).
    """
    if mode in ("pixel_l1", "pixel_sum"):
        err = (real - generated).abs() if mode == "pixel_l1" else (real - generated).pow(2)
        err = err.clamp(max=tau)
        if weight is not None:
            err = err * weight
        return err.flatten(1).sum(dim=1).mean()
    sq = (real - generated).pow(2).flatten(1)  # (B, S*S)
    if mode == "sample_floor":
        return sq.mean(dim=1).clamp(min=tau).mean()
    if mode == "pixel_truncate":
        return sq.clamp(max=tau).mean()
    raise ValueError(f"unknown reconstruction mode {mode!r} (sample_floor, pixel_truncate, "
                     "pixel_sum, pixel_l1)")


def feature_matching_loss(real_features: torch.Tensor, fake_features: torch.Tensor
                          ) -> torch.Tensor:
    """Gen's adversarial term as feature matching (Salimans et al. 2016): the squared distance
    between the batch means of Dis's shared-trunk features on real and on generated crops,
    ||mean_i f(x_i) - mean_i f(Gen(J_i))||^2 averaged over feature entries. Real features are
    a fixed target (no gradient)."""
    return (real_features.detach().float().mean(dim=0)
            - fake_features.float().mean(dim=0)).pow(2).mean()


def joint_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_J = mean_i ||pred_i - J_i||^2, both (B, J, 3), squared norm over all J x 3 coordinates."""
    return (predicted - target).pow(2).flatten(1).sum(dim=1).mean()
