"""The seed's losses, with the sign conventions of the mission spec.

* L_gan: binary cross-entropy of the real/fake head, real crops -> 1, generated -> 0. A positive
  loss the discriminator minimises (the seed writes log Dis(x) + log(1 - Dis(Gen(J)))).
* L_Dis = L_J + L_gan.
* L_Gen = L_recons - L_gan, written in the usual non-saturating form: the generator minimises
  L_recons + BCE(Dis(Gen(J)), 1) = L_recons - log Dis(Gen(J)), which has the same optimum as
  maximising L_gan but does not vanish when the discriminator wins.
* L_recons: "clipped squared error", read per sample ("sample_floor", the first implementation
  and configs/seed-literal.yaml: errors under the sensor-noise floor tau give no gradient), or as
  the presets' clipped absolute error summed over pixels ("pixel_l1"). The squared-error sum the
  seed's norm suggests, and a per-pixel truncation, were measured and removed (docs/results.md,
  "Options removed after the study").
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
    mode "pixel_l1": mean_i sum_p w_ip min(|x - g|, tau), ``weight`` (B, 1, S, S) emphasising
    pixels, e.g. the hand region (where a finger's place is uncertain by a pixel or two, the
    squared error's optimum is a blur of hand and background depths, the absolute error's the
    likelier of the two, a sharp edge).
    """
    if mode == "pixel_l1":
        err = (real - generated).abs().clamp(max=tau)
        if weight is not None:
            err = err * weight
        return err.flatten(1).sum(dim=1).mean()
    if mode == "sample_floor":
        return (real - generated).pow(2).flatten(1).mean(dim=1).clamp(min=tau).mean()
    raise ValueError(f"unknown reconstruction mode {mode!r} (sample_floor, pixel_l1)")


def joint_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_J = mean_i ||pred_i - J_i||^2, both (B, J, 3), squared norm over all J x 3 coordinates."""
    return (predicted - target).pow(2).flatten(1).sum(dim=1).mean()
