"""Network shapes, the pose branch's independence, and each loss against its formula."""
import math

import pytest
import torch

from handgan.losses import (
    discriminator_gan_loss,
    generator_adversarial_loss,
    joint_loss,
    reconstruction_loss,
)
from handgan.models import Discriminator, Generator, ModelConfig, PoseEstimator, init_weights


@pytest.mark.parametrize("size, depth", [(64, 4), (128, 5)])
def test_shapes(size, depth):
    cfg = ModelConfig(size=size, width=8, pose_hidden=32)
    assert cfg.depth == depth
    gen, dis = Generator(cfg), Discriminator(cfg)
    gen.apply(init_weights), dis.apply(init_weights)
    joints = torch.rand(3, 14, 3) * 2 - 1
    crops = gen(joints)
    assert crops.shape == (3, 1, size, size)
    assert crops.min() >= -1 and crops.max() <= 1
    logits, pose = dis(crops)
    assert logits.shape == (3,) and pose.shape == (3, 14, 3)


@pytest.mark.parametrize("shared", [0, 2, 4])
def test_pose_branch_does_not_depend_on_the_real_fake_branch(shared):
    torch.manual_seed(0)
    dis = Discriminator(ModelConfig(size=64, width=8, shared_layers=shared, pose_hidden=32)).eval()
    x = torch.rand(4, 1, 64, 64) * 2 - 1
    before = dis.estimate(x)
    with torch.no_grad():
        for p in dis.real_fake.parameters():
            p.add_(torch.randn_like(p))  # scramble the real/fake head
    torch.testing.assert_close(dis.estimate(x), before)
    torch.testing.assert_close(dis(x)[1], before)
    # the standalone estimator shares the pose parameters and gives the same joints
    torch.testing.assert_close(PoseEstimator(dis).eval()(x), before)
    names = {n for n, _ in PoseEstimator(dis).named_parameters()}
    assert not any("real_fake" in n for n in names)


def test_gan_losses_equal_binary_cross_entropy():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sig = torch.sigmoid
    expected = (-(torch.log(sig(real))).mean() - torch.log(1 - sig(fake)).mean())
    assert discriminator_gan_loss(real, fake).item() == pytest.approx(expected.item(), rel=1e-6)
    # non-saturating generator term: -log Dis(Gen(J))
    assert generator_adversarial_loss(fake).item() == pytest.approx(-torch.log(sig(fake)).mean().item(), rel=1e-6)


def test_reconstruction_loss_floors_per_sample():
    real = torch.zeros(2, 1, 2, 2)
    gen = torch.tensor([[[[0.1, 0.1], [0.1, 0.1]]], [[[1.0, 0.0], [0.0, 0.0]]]])
    # per-sample mean squared errors: 0.01 and 0.25
    assert reconstruction_loss(real, gen, tau=0.05).item() == pytest.approx((0.05 + 0.25) / 2)
    assert reconstruction_loss(real, gen, tau=0.0).item() == pytest.approx((0.01 + 0.25) / 2)
    with pytest.raises(ValueError):
        reconstruction_loss(real, gen, tau=0.1, mode="median")


def test_joint_loss_is_the_mean_squared_norm():
    pred = torch.zeros(2, 14, 3)
    target = torch.zeros(2, 14, 3)
    target[0, 0] = torch.tensor([3.0, 4.0, 0.0])  # squared norm 25
    target[1, 5, 2] = 1.0  # squared norm 1
    assert joint_loss(pred, target).item() == pytest.approx(13.0)
    assert math.isclose(joint_loss(target, target).item(), 0.0)
