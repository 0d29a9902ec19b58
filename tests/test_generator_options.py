"""The generator issue's options, each against its formula: L_recons as a clipped, weighted sum
over pixels, the skeleton render Gen draws, new poses in a palm-aligned frame, the warm-up and
ramp of the schedule, and their wiring in a GAN step."""
import math

import numpy as np
import pytest
import torch

import handgan.models as models
import handgan.steps as steps_mod
import handgan.train as train_mod
from handgan.batches import Batch
from handgan.config import LossConfig, apply_overrides, preset
from handgan.errors import HandganError
from handgan.losses import joint_loss, reconstruction_loss
from handgan.models import RENDER_FOCUS, Generator, ModelConfig, skeleton_depth
from handgan.posespace import new_poses, palm_align, random_rotations


def test_pixel_l1_reconstruction_is_the_clipped_weighted_absolute_sum():
    real = torch.zeros(2, 1, 4, 4)
    gen = torch.zeros(2, 1, 4, 4)
    gen[0, 0, 0, 0] = 0.5    # |e| 0.5
    gen[0, 0, 1, 1] = -2.0   # |e| 2, clipped to tau = 1
    gen[1, 0, 2, 2] = 0.25
    weight = torch.ones(2, 1, 4, 4)
    weight[1, 0, 2, 2] = 4.0
    # sample 0: 0.5 + 1 = 1.5; sample 1: 4 * 0.25 = 1; mean 1.25
    assert reconstruction_loss(real, gen, 1.0, "pixel_l1", weight).item() == pytest.approx(1.25)
    # a blur between hand (-0.4) and background (+1) costs the same absolute error as either
    # guess when each is equally likely; squared error prefers the blur
    hand, back = torch.full((1, 1, 1, 1), -0.4), torch.ones(1, 1, 1, 1)
    blur = (hand + back) / 2

    def cost(guess, mode):
        return sum(reconstruction_loss(t, guess, 9.0, mode).item() for t in (hand, back))
    assert cost(blur, "pixel_l1") == pytest.approx(cost(hand, "pixel_l1"))
    assert sum(((t - blur) ** 2).item() for t in (hand, back)) < (hand - back).pow(2).item()


def test_skeleton_depth_renders_a_sphere_in_perspective():
    # A bone of length 0 at (0.5, 0, 0.4) with radius 0.1: one sphere.
    joints = torch.tensor([[[0.5, 0.0, 0.4], [0.5, 0.0, 0.4]]])
    radii = torch.tensor([[0.1, 0.1]])
    depth = skeleton_depth(joints, 64, [(0, 1)], radii)[0, 0]
    k = RENDER_FOCUS / (RENDER_FOCUS + 0.4)           # perspective: nearer the centre, smaller
    col = (0.5 * k + 1) * 32                          # crop px of its centre (x right)
    c = round(col)                                    # the pixel that samples nearest to it
    dx = (c / 32 - 1) - 0.5 * k                       # crop-plane offset of that pixel
    dy = 1 - 31 / 32                                  # row 31: just above the centre line
    expected = 0.4 - math.sqrt(0.1 ** 2 - (dx ** 2 + dy ** 2) / k ** 2)
    assert depth[31, c].item() == pytest.approx(expected, abs=1e-5)
    assert depth[31, 2].item() == 1.0 and depth[2, c].item() == 1.0  # background elsewhere
    # the silhouette is the sphere's projected radius, 0.1 * k * 32 px = 3.1 px
    assert (depth[31] < 1).sum().item() in (5, 6)


def test_skeleton_depth_with_a_centre_ray_draws_where_an_off_axis_crop_shows_the_joint():
    from handgan.camera import NYU
    from handgan.preprocess import CropTransform

    t = CropTransform(np.array([90.0, 70.0, 700.0]), 300.0, 64, NYU)  # up left
    joint = np.array([0.2, -0.1, -0.6])        # 90 mm in front of the centre
    col, row = t.norm_to_crop_px(joint)        # where the crop shows it
    joints = torch.tensor(np.stack([joint, joint]), dtype=torch.float32)[None]
    ray = torch.tensor(t.ray)[None]
    for r, expect_hit in ((ray, True), (None, False)):
        depth = skeleton_depth(joints, 64, [(0, 1)], torch.tensor([[0.03, 0.03]]), ray=r)[0, 0]
        nearest = divmod(int(depth.argmin()), 64)          # (row, col) of the nearest surface
        hit = abs(nearest[0] - row) <= 0.6 and abs(nearest[1] - col) <= 0.6
        assert hit == expect_hit  # without the ray the on-axis guess misses by pixels


def test_skeleton_depth_keeps_the_nearest_surface_and_passes_gradients():
    joints = torch.tensor([[[0.0, 0.0, 0.5], [0.0, 0.0, 0.5], [0.0, 0.0, -0.3], [0.0, 0.0, -0.3]]],
                          requires_grad=True)
    radii = torch.tensor([[0.1, 0.1], [0.05, 0.05]], requires_grad=True)
    depth = skeleton_depth(joints, 32, [(0, 1), (2, 3)], radii)
    # pixel (16, 16) samples the crop centre: the nearer sphere's front, -0.3 - 0.05
    assert depth[0, 0, 16, 16].item() == pytest.approx(-0.35, abs=1e-5)  # the nearer sphere wins
    depth.sum().backward()
    assert joints.grad[0, 2, 2] > 0 and radii.grad.abs().sum() > 0


def test_skeleton_depth_windows_match_a_whole_crop_z_buffer():
    torch.manual_seed(0)
    joints = (torch.rand(3, 14, 3) - 0.5) * 1.6
    radii = 0.03 + 0.06 * torch.rand(13, 2)
    depth = skeleton_depth(joints, 32, models.skeleton_edges(14), radii, torch.tensor(0.14))
    # every sphere against every pixel centre, the nearest surface kept
    t = torch.linspace(0, 1, models.RENDER_SAMPLES)
    e = torch.tensor(models.skeleton_edges(14))
    a, c = joints[:, e[:, 0]], joints[:, e[:, 1]]
    centres = (a[:, :, None] + t[None, None, :, None] * (c - a)[:, :, None]).reshape(3, -1, 3)
    r = (radii[:, :1] + t * (radii[:, 1:] - radii[:, :1])).reshape(1, -1).expand(3, -1)
    wrist = 0.5 * (joints[:, 11] + joints[:, 12])
    away = torch.nn.functional.normalize(wrist - joints[:, 13], dim=-1)
    s = torch.linspace(0, models.FOREARM_LENGTH, models.FOREARM_SAMPLES)
    centres = torch.cat([centres, wrist[:, None] + s[None, :, None] * away[:, None]], dim=1)
    r = torch.cat([r, torch.full((3, models.FOREARM_SAMPLES), 0.14)], dim=1)
    k = RENDER_FOCUS / (RENDER_FOCUS + centres[..., 2])
    grid = torch.arange(32) / 16
    xs, ys = (grid - 1).view(1, 1, 1, -1), (1 - grid).view(1, 1, -1, 1)
    d2 = ((xs - (centres[..., 0] * k)[..., None, None]) ** 2
          + (ys - (centres[..., 1] * k)[..., None, None]) ** 2) / k[..., None, None] ** 2
    h2 = r[..., None, None] ** 2 - d2
    dense = torch.where(h2 > 0, centres[..., 2, None, None] - h2.clamp(min=1e-6).sqrt(),
                        torch.ones_like(h2)).amin(dim=1, keepdim=True).clamp(-1, 1)
    assert (depth < 1).float().mean() > 0.05         # a hand was drawn
    assert torch.allclose(depth, dense, atol=1e-5)


def test_the_seed_generator_keeps_its_parameter_names_and_the_forearm_leaves_the_crop():
    plain = Generator(ModelConfig(size=64, width=8))
    assert "fc.0.weight" in plain.state_dict() and "up.0.weight" in plain.state_dict()
    assert plain(torch.rand(3, 14, 3) - 0.5).shape == (3, 1, 64, 64)
    # the forearm leaves the crop from the wrist, away from the palm
    joints = torch.zeros(1, 14, 3)
    joints[0, 11:13, 1] = -0.3                      # wrist points below the palm centre
    arm = skeleton_depth(joints, 64, (), torch.zeros(0, 2), torch.tensor(0.14))[0, 0]
    assert arm[63, 32] < 1 and arm[0, 32] == 1       # reaches the bottom edge, not the top


def test_palm_plate_fills_the_triangles_between_palm_knuckles_and_wrist():
    joints = torch.zeros(1, 14, 3)
    for k, x in zip((1, 3, 5, 7), (-0.3, -0.1, 0.1, 0.3)):   # PIPs little..index, above the palm
        joints[0, k] = torch.tensor([x, 0.6, 0.0])
    joints[0, 11] = torch.tensor([-0.2, -0.4, 0.0])           # wrist, ulnar and radial
    joints[0, 12] = torch.tensor([0.2, -0.4, 0.0])
    plate = models.palm_plate(joints, 14)[0]
    assert plate.shape == (60, 3)
    # bases halfway to the PIPs: the plate spans x -0.2..0.2 at y 0.3, down to the wrist at -0.4
    assert plate[:, 1].max().item() == pytest.approx(0.3) and plate[:, 1].min().item() == pytest.approx(-0.4)
    assert plate[:, 0].abs().max().item() == pytest.approx(0.2)
    assert torch.all(plate[:, 2] == 0)                          # a flat hand, a flat plate
    # a third of the way from the middle finger's base (0.05) to the index finger's (0.15)
    assert any(torch.allclose(q, torch.tensor([0.05 + 0.1 / 3, 0.3, 0.0])) for q in plate)


def test_render_only_generator_is_the_render_with_learned_radii():
    cfg = ModelConfig(size=32, width=8, gen_render=True)
    gen = Generator(cfg)
    assert set(gen.state_dict()) == {"radii", "forearm_radius", "palm_radius", "forearm_spread",
                                     "bases"}
    joints = (torch.rand(2, 14, 3) - 0.5) * 0.6
    out = gen(joints)
    render = skeleton_depth(joints, 32, gen.edges, gen.radii, gen.forearm_radius,
                            palm_radius=gen.palm_radius, forearm_spread=gen.forearm_spread,
                            bases=gen.bases)
    assert torch.equal(out, render.clamp(-0.98, 0.98))
    out.sum().backward()
    assert gen.radii.grad.abs().sum() > 0 and gen.bases.grad.abs().sum() > 0


def _flat_hand() -> torch.Tensor:
    """A flat hand in the crop plane: palm centre at 0, wrist points 0.4 below it."""
    joints = torch.zeros(1, 14, 3)
    joints[0, 11] = torch.tensor([-0.2, -0.4, 0.0])  # ulnar wrist point
    joints[0, 12] = torch.tensor([0.2, -0.4, 0.0])   # radial
    return joints


def test_hand_bases_sit_in_the_palm_frame():
    joints = _flat_hand()
    # frame: u = +x (ulnar -> radial), v = +y (wrist -> palm centre), w = u x v = +z; L = 0.4
    bases = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0],
                          [0.5, 0.5, 0.0], [0.0, -0.5, 0.25]])
    points = models.hand_bases(joints, bases)[0]
    expected = 0.4 * bases
    assert torch.allclose(points, expected, atol=1e-6)
    # the frame turns and scales with the hand: rotate 90 degrees about z, double the size
    turn = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    moved = models.hand_bases(2 * joints @ turn.T + 0.1, bases)[0]
    assert torch.allclose(moved, 2 * expected @ turn.T + 0.1, atol=1e-6)


def test_fingers_are_drawn_from_their_knuckles_not_the_palm_centre():
    joints = _flat_hand()
    joints[0, 5] = torch.tensor([0.0, 0.6, 0.0])     # middle PIP straight up, its tip above
    joints[0, 4] = torch.tensor([0.0, 0.9, 0.0])
    bases = torch.tensor(models.HAND_BASES_14)
    bases[2] = torch.tensor([0.8, 0.5, 0.0])           # middle knuckle moved to x = 0.32, y = 0.2
    radii = torch.full((len(models.skeleton_edges(14)), 2), 0.06)  # 2 px: spheres overlap
    depth = skeleton_depth(joints, 64, models.skeleton_edges(14), radii, bases=bases)[0, 0]
    plain = skeleton_depth(joints, 64, models.skeleton_edges(14), radii)[0, 0]
    # the bone knuckle -> PIP crosses y = 0.4 halfway, at x = 0.16 (col 37); palm -> PIP at x = 0
    row = round((1 - 0.4) * 32)
    assert depth[row, 37] < 1 and depth[row, 32] == 1
    assert plain[row, 32] < 1 and plain[row, 37] == 1


def test_forearm_rows_spread_across_the_wrist():
    joints = _flat_hand()
    one = skeleton_depth(joints, 64, (), torch.zeros(0, 2), torch.tensor(0.15))[0, 0]
    two = skeleton_depth(joints, 64, (), torch.zeros(0, 2), torch.tensor(0.15),
                         forearm_spread=torch.tensor(0.1))[0, 0]
    rows = slice(48, 64)  # below the wrist: the forearm, running down the crop along -y
    wider = ((two[rows] < 1).sum(1) - (one[rows] < 1).sum(1)).float()
    # two rows 0.1 either side of the wrist's middle, along the wrist points: 0.2 (6.4 px) wider
    assert wider.mean().item() == pytest.approx(6.4, abs=1.0)
    # symmetric about the hand's axis x = 0 (col 32): col 32 - c mirrors col 32 + c
    assert torch.allclose(two[:, 1:32].flip(1), two[:, 33:], atol=1e-6)


def test_sensor_dropout_loses_edge_and_hand_pixels_at_their_rates():
    crops = torch.full((64, 1, 32, 32), 1.0)
    crops[:, :, 8:24, 8:24] = 0.0                      # a square hand, 16 x 16 px
    crops[:, :, 8:24, 16:24] = 0.4                     # its right half 60 mm further away
    torch.manual_seed(0)
    out = models.sensor_dropout(crops, 0.5, 0.1)
    lost = (out != crops)
    assert torch.all(out[lost] == models.SENSOR_BACKGROUND)          # holes show background
    assert not lost[:, :, :8].any() and not lost[:, :, 24:].any()    # never the background
    edge = torch.zeros(32, 32, dtype=torch.bool)
    edge[8, 8:24] = edge[23, 8:24] = edge[8:24, 8] = edge[8:24, 23] = True   # silhouette
    edge[8:24, 15:17] = True                           # the 60 mm step (> 20 mm) inside
    inner = torch.zeros(32, 32, dtype=torch.bool)
    inner[8:24, 8:24] = True
    inner &= ~edge
    assert lost[:, 0, edge].float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert lost[:, 0, inner].float().mean().item() == pytest.approx(0.1, abs=0.02)
    assert models.sensor_dropout(crops, 0.0, 0.0) is crops


def test_generator_sensor_only_where_asked_and_reconstruction_sees_the_clean_crop():
    cfg = ModelConfig(size=32, width=8, gen_render=True, gen_edge_dropout=0.5,
                      gen_pixel_dropout=0.2)
    gen = Generator(cfg)
    joints = (torch.rand(4, 14, 3) - 0.5) * 0.6
    clean = gen(joints, clean=True)
    noisy = gen(joints)
    assert torch.equal(clean, gen.render(joints, None).clamp(-0.98, 0.98))
    changed = noisy != clean
    assert changed.any() and torch.all(noisy[changed] == models.SENSOR_BACKGROUND)
    with pytest.raises(ValueError, match="gen_edge_dropout"):
        ModelConfig(gen_edge_dropout=1.0)


def test_rays_for_new_poses_repeat_the_labelled_rays():
    ray_l = torch.arange(6.0).view(2, 3)
    assert steps_mod.rays_for(None, 5) is None
    assert steps_mod.rays_for(ray_l, 2) is ray_l
    assert steps_mod.rays_for(ray_l, 5).tolist() == [ray_l[i % 2].tolist() for i in range(5)]


def test_centre_rays_are_the_centre_direction_and_depth_in_half_cubes():
    from handgan.camera import NYU
    from handgan.preprocess import CropTransform, centre_rays

    t = CropTransform(np.array([400.0, 100.0, 900.0]), 300.0, 64, NYU)
    x, y, z = t.centre_xyz
    assert t.ray == pytest.approx([x / z, y / z, 6.0], rel=1e-6)
    rows = np.array([[400.0, 100.0, 900.0], [320.0, 240.0, 600.0]])
    rays = centre_rays(rows, np.array([300.0, 200.0]), NYU)
    assert rays[1] == pytest.approx([0.0, 0.0, 6.0])


def test_palm_alignment_undoes_a_rotation_and_a_shift():
    g = torch.Generator().manual_seed(0)
    pose = torch.rand(4, 14, 3, generator=g, dtype=torch.float64) - 0.5
    rot = random_rotations(4, 60.0, g)
    moved = pose @ rot.transpose(1, 2) + 0.1
    assert torch.allclose(palm_align(moved, pose), pose, atol=1e-9)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(4, dtype=torch.float64))


def test_new_poses_recombine_labelled_hands():
    g = torch.Generator().manual_seed(1)
    poses = torch.rand(64, 14, 3, generator=g) - 0.5
    fingers = new_poses(poses, ("finger",), generator=torch.Generator().manual_seed(2))
    # each finger comes from the pose itself or from a palm-aligned partner; the palm stays
    assert torch.equal(fingers[:, 11:14], poses[:, 11:14])
    turned = new_poses(poses, ("rotate",), max_turn_deg=30.0,
                       generator=torch.Generator().manual_seed(3))
    # a turn about the palm centre keeps every joint's distance to it
    d0 = (poses - poses[:, 13:14]).norm(dim=-1)
    d1 = (turned - turned[:, 13:14]).norm(dim=-1)
    assert torch.allclose(d0, d1, atol=1e-5) and not torch.allclose(poses, turned)
    mixed = new_poses(poses, ("mix",), generator=torch.Generator().manual_seed(4))
    assert mixed.shape == poses.shape and torch.isfinite(mixed).all()
    with pytest.raises(HandganError):
        new_poses(poses, ("unlabeled",))


def test_the_skeleton_term_turns_poses_by_at_most_loss_synth_turn_deg():
    poses = torch.rand(6, 14, 3, generator=torch.Generator().manual_seed(5)) - 0.5
    assert torch.equal(steps_mod.synth_targets(poses, None, ["rotate"], 0.0), poses)  # no turn
    assert not torch.allclose(steps_mod.synth_targets(poses, None, ["rotate"], 90.0), poses)


def test_step_phase_warm_up_then_ramp():
    loss = LossConfig(gen_warmup_epochs=2, w_synth=4.0, synth_ramp_epochs=2)
    phase = steps_mod.step_phase
    assert phase(loss, 0, 10) == steps_mod.StepPhase(gen_adversarial=False, synth_weight=0.0)
    assert phase(loss, 19, 10).gen_adversarial is False
    assert phase(loss, 20, 10) == steps_mod.StepPhase(True, 0.0)
    assert phase(loss, 30, 10).synth_weight == pytest.approx(2.0)
    assert phase(loss, 400, 10).synth_weight == pytest.approx(4.0)
    assert phase(LossConfig(), 0, 10) == steps_mod.StepPhase(True, 0.0)  # the seed: no phases


def test_synth_poses_are_checked():
    cfg = preset("quick")
    with pytest.raises(HandganError, match="synth_poses"):
        apply_overrides(cfg, ["loss.synth_poses=mix+wobble"])
    assert apply_overrides(cfg, ["loss.synth_poses=finger+unlabeled"]).loss.synth_pose_sources \
        == ("finger", "unlabeled")


def test_gan_step_trains_the_pose_head_on_generated_pairs(monkeypatch):
    cfg = apply_overrides(preset("quick"), [
        "model.width=8", "localizer.enabled=false", "model.pose_hidden=32",
        "loss.synth_poses=mix+finger+rotate+unlabeled", "loss.w_synth=1", "loss.w_gen_adv=1"])
    train_mod.seed_everything(0)
    gen, dis = train_mod.build_models(cfg)
    opt_g, opt_d = train_mod.build_optimizers(cfg, gen, dis)
    g = torch.Generator().manual_seed(0)
    x_l = torch.rand(6, 1, 64, 64, generator=g) * 2 - 1
    j_l = torch.randn(6, 14, 3, generator=g) * 0.3
    x_u = torch.rand(5, 1, 64, 64, generator=g) * 2 - 1
    seen = []  # L_J's calls: the labelled crops', then the generated pairs'
    monkeypatch.setattr(steps_mod, "joint_loss",
                        lambda p, t: seen.append((p.shape[0], t)) or joint_loss(p, t))
    losses = steps_mod.gan_step(gen, dis, opt_g, opt_d, Batch(x_l, j_l, x_u), cfg,
                                phase=steps_mod.StepPhase(True, 0.5))
    # 6 new poses from the labelled ones + 5 read off the unlabelled crops, never their labels
    assert [n for n, _ in seen] == [6, 11] and math.isfinite(losses["loss_synth"])
    assert torch.equal(seen[0][1], j_l) and not torch.equal(seen[1][1][:6], j_l)
    assert losses["loss_gen_adv"] > 0
    # in the warm-up nothing is generated for the pose head and Gen has no adversarial term
    seen.clear()
    losses = steps_mod.gan_step(gen, dis, opt_g, opt_d, Batch(x_l, j_l, x_u), cfg,
                                phase=steps_mod.StepPhase(False, 0.0))
    assert [n for n, _ in seen] == [6] and losses["loss_gen_adv"] == 0.0
