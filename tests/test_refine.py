"""refine.refine_poses: analysis by synthesis moves a pose toward the one that drew the crop, the
prior holds it at J0, the generator is never changed, and crops of a batch stay independent."""
import numpy as np
import pytest
import torch
from torch import nn

from handgan.models import Generator, ModelConfig, init_weights
from handgan.refine import refine_poses

CFG = ModelConfig(size=32, num_joints=14, width=4)


class LinearGen(nn.Module):
    """Gen(J) = A vec(J) + b: the weighted squared difference to a crop Gen(J*) is a strictly
    convex quadratic in J (A has full column rank), so J* is its only minimum."""

    def __init__(self):
        super().__init__()
        self.cfg = CFG
        g = torch.Generator().manual_seed(0)
        self.a = nn.Parameter(torch.randn(32 * 32, 14 * 3, generator=g) * 0.05)
        self.b = nn.Parameter(torch.full((32 * 32,), 0.5))

    def forward(self, joints, ray=None, clean=False):
        return (joints.flatten(1) @ self.a.T + self.b).view(-1, 1, 32, 32)


def _poses(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 14, 3, generator=g) - 0.5) * 0.8


def test_refinement_moves_a_perturbed_pose_toward_the_truth():
    gen = LinearGen()
    truth = _poses(4)
    with torch.no_grad():
        crops = gen(truth)
    j0 = truth + 0.05 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(2))
    refined = refine_poses(gen, crops, j0, steps=60, lr=0.01, prior_weight=0.0)
    before = (j0 - truth).norm(dim=-1).mean().item()
    after = (refined - truth).norm(dim=-1).mean().item()
    assert before == pytest.approx(0.0751, abs=1e-4)  # 11.3 mm of a 300 mm cube
    assert after < 0.05 * before  # 0.0022 after 60 steps


def test_a_huge_prior_keeps_j0():
    gen = LinearGen()
    truth = _poses(4)
    with torch.no_grad():
        crops = gen(truth)
    j0 = truth + 0.05
    free = refine_poses(gen, crops, j0, steps=20, lr=0.001, prior_weight=0.0)
    held = refine_poses(gen, crops, j0, steps=20, lr=0.001, prior_weight=1e6)
    assert (free - j0).abs().max() > 0.01  # the data term alone moves it 10 steps' worth
    assert (held - j0).abs().max() <= 0.0011  # Adam's first step (lr) is all it ever moves


def test_the_generator_is_frozen_untouched_and_restored():
    torch.manual_seed(0)
    gen = Generator(CFG)
    gen.apply(init_weights)
    gen.train()
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    crops = torch.rand(3, 1, 32, 32) * 2 - 1
    out = refine_poses(gen, crops, _poses(3), steps=5)
    assert not out.requires_grad and out.shape == (3, 14, 3)
    for k, v in gen.state_dict().items():  # weights and batch-norm statistics (eval mode)
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None and p.requires_grad for p in gen.parameters())
    assert gen.training


def test_batch_equals_one_by_one_and_zero_steps_is_j0():
    torch.manual_seed(0)
    gen = Generator(CFG)
    gen.apply(init_weights)
    crops, j0 = torch.rand(3, 1, 32, 32) * 2 - 1, _poses(3)
    batch = refine_poses(gen, crops, j0, steps=4)
    for i in range(3):
        one = refine_poses(gen, crops[i:i + 1], j0[i:i + 1], steps=4)
        np.testing.assert_allclose(batch[i].numpy(), one[0].numpy(), atol=1e-6)
    assert torch.equal(refine_poses(gen, crops, j0, steps=0), j0)
    with torch.inference_mode():  # as Estimator calls it: refinement still gets its gradients
        assert not torch.equal(refine_poses(gen, crops, j0, steps=2), j0)
