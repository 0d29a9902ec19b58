"""Batched torch augmentation (handgan.deviceaugment) against the CPU path it copies
(augment.py, preprocess.py), all on CPU tensors: crops re-warped pixel for pixel as rewarp_crop
does, joints mapped as map_joints within 1e-3 mm, round trips, the draw's distributions against
the config, and the whole batch on the meta device (no tensor made on another device)."""
import numpy as np
import pytest
import torch

from handgan import deviceaugment as da
from handgan.augment import AugmentConfig, augment_crop, draw_transform, map_joints
from handgan.cachebuild import build_cache
from handgan.cachesource import CropParams
from handgan.cachestore import transform_from_row, transform_row
from handgan.camera import ICVL, NYU
from handgan.data.nyu import NYUSplit
from handgan.preprocess import BACKGROUND, crop_depth, rewarp_crop
from handgan.synth.generate import synthesize_dataset

from helpers import HAND

CAMERAS = [pytest.param(NYU, id="nyu-y-up"), pytest.param(ICVL, id="icvl-y-down")]
# Much stronger than the defaults, so that direction or scale mistakes cannot hide.
STRONG = AugmentConfig(combine=True, rotation_deg=180.0, scale_sigma=0.1,
                       translation_sigma_mm=20.0)
# the new transforms of the parity tests: every mode alone, the default recipe, all combined
DRAWS = [AugmentConfig(modes=("com",), translation_sigma_mm=20.0),
         AugmentConfig(modes=("rot",)), AugmentConfig(modes=("sc",), scale_sigma=0.1),
         AugmentConfig(), AugmentConfig(combine=True), STRONG]
MAX_MISMATCH_SHARE = 1e-3  # crop pixels that may differ from rewarp_crop's (measured: none)
TOL_MM = 1e-3


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return synthesize_dataset(tmp_path_factory.mktemp("synth"), 8, 0, seed=5, workers=1,
                              config=HAND, progress=False)


@pytest.fixture(scope="module", params=[64, 128], ids=["S64", "S128"])
def cache(frames, tmp_path_factory, request):
    return build_cache(NYUSplit(frames, "train"), tmp_path_factory.mktemp("cache"),
                       CropParams(size=request.param), progress=False, workers=1)


def cpu_path(crops, src_rows, dst_rows, joints, intr):
    """rewarp_crop and map_joints crop by crop: (B, S, S) float32, (B, J, 3) float64."""
    pairs = [(transform_from_row(a, intr), transform_from_row(b, intr))
             for a, b in zip(src_rows, dst_rows)]
    out = np.stack([rewarp_crop(c, a, b) for c, (a, b) in zip(crops, pairs)])
    mapped = np.stack([map_joints(j, a, b) for j, (a, b) in zip(joints, pairs)])
    return out, mapped


def to_mm(joints_norm, rows, intr):
    """(B, J, 3) normalised joints of the transform rows -> (B, J, 3) xyz mm (CPU path)."""
    return np.stack([transform_from_row(r, intr).norm_to_xyz(j) for j, r in zip(joints_norm, rows)])


def assert_batch_matches_cpu(crops, src_rows, dst_rows, joints, intr):
    """The batched crops and joints against the CPU path; returns (mismatch share, max mm)."""
    ref_crops, ref_joints = cpu_path(np.asarray(crops, np.float32), src_rows, dst_rows, joints,
                                     intr)
    src, dst = torch.from_numpy(src_rows), torch.from_numpy(dst_rows)
    out = da.rewarp_crops(torch.from_numpy(crops)[:, None], src, dst, intr)
    assert out.shape == (len(crops), 1, *crops.shape[1:]) and out.dtype == torch.float32
    out = out[:, 0].numpy()
    differ = out != ref_crops
    share = differ.mean()
    assert share <= MAX_MISMATCH_SHARE
    mapped = da.map_joints(torch.from_numpy(joints), src, dst, intr)
    assert mapped.dtype == torch.float64
    err_mm = np.abs(to_mm(mapped.numpy(), dst_rows, intr) - to_mm(ref_joints, dst_rows, intr))
    assert err_mm.max() < TOL_MM
    return share, err_mm.max()


# ---- parity with the CPU path --------------------------------------------------------------

@pytest.mark.parametrize("intr", CAMERAS)
def test_crop_matrices_equal_crop_transform_m(intr):
    rng = np.random.default_rng(1)
    rows = np.stack([transform_row(transform_from_row(np.array([
        rng.uniform(0, intr.width), rng.uniform(0, intr.height), rng.uniform(250, 1600),
        *rng.uniform(120, 450, 3), size, rng.uniform(-180, 180) if i % 2 else 0.0]), intr))
        for i, size in enumerate([64, 128] * 200)])
    m = da.crop_matrices(torch.from_numpy(rows), intr).numpy()
    ref = np.stack([transform_from_row(r, intr).M for r in rows])
    # float64 rounding apart: torch.sin / torch.cos can differ from libm's in the last bit
    # (measured: 1 matrix of 400 differs, by 1 ulp, for NYU; none for ICVL)
    np.testing.assert_allclose(m, ref, rtol=1e-15, atol=1e-12)
    assert np.all(m == ref, axis=(1, 2)).mean() >= 0.98


def test_cache_crops_rewarped_and_joints_mapped_as_the_cpu_path(cache):
    """Cached float16 crops and rows, new transforms from the CPU path's own draw. Measured:
    0 differing pixels (of 197k at S = 64, 786k at S = 128); joints identical (0 mm)."""
    rng = np.random.default_rng(cache.size)
    rows = np.tile(np.arange(len(cache)), len(DRAWS))  # every row under every recipe
    src_rows = cache.transforms[rows]
    dst_rows = np.stack([transform_row(draw_transform(transform_from_row(r, cache.intrinsics),
                                                       rng, DRAWS[k // len(cache)]))
                         for k, r in enumerate(src_rows)])
    share, err_mm = assert_batch_matches_cpu(np.asarray(cache.crops[rows]), src_rows, dst_rows,
                                             np.asarray(cache.joints_norm[rows], np.float64),
                                             cache.intrinsics)
    assert share == 0  # stricter than the bound above: exact on this data


def test_torch_drawn_transforms_on_chained_crops_match_the_cpu_path(cache):
    """Sources that are themselves augmented (rotated, moved, rescaled float32 crops) and new
    rows drawn by draw_transforms. Measured: 0 differing pixels; joints within 0 mm (S = 64)
    and 1.1e-13 mm (S = 128)."""
    rng = np.random.default_rng(7)
    intr = cache.intrinsics
    crops, src_rows, joints = [], [], []
    for k in range(3 * len(cache)):
        i = k % len(cache)
        crop, t, j = augment_crop(np.asarray(cache.crops[i], np.float32), cache.transform(i),
                                  np.asarray(cache.joints_norm[i], np.float64), rng, STRONG)
        crops.append(crop)
        src_rows.append(transform_row(t))
        joints.append(j)
    src_rows = np.stack(src_rows)
    gen = torch.Generator().manual_seed(0)
    dst_rows = da.draw_transforms(torch.from_numpy(src_rows), STRONG, intr, gen).numpy()
    share, _ = assert_batch_matches_cpu(np.stack(crops), src_rows, dst_rows, np.stack(joints),
                                        intr)
    assert share == 0


@pytest.mark.parametrize("intr", CAMERAS)
def test_noise_frames_any_centre_cube_and_rotation(intr):
    """Crops of uniform noise (every pixel unlike its neighbours, so any index off by one
    shows), anywhere in the frame, with uneven cubes, rotated sources and strong new draws.
    Measured: 0 of 1.3M pixels differ per camera; joints identical (0 mm)."""
    rng = np.random.default_rng(11)
    frame = rng.uniform(300.0, 1600.0, (intr.height, intr.width)).astype(np.float32)
    for size in (64, 128):
        crops, src_rows, dst_rows = [], [], []
        for i in range(64):
            centre = [rng.uniform(0, intr.width), rng.uniform(0, intr.height),
                      rng.uniform(300.0, 1500.0)]
            cube = rng.uniform(150.0, 400.0, 3) if i % 3 else 300.0
            crop, t = crop_depth(frame, centre, cube, size, intr=intr,
                                 rotation_deg=rng.uniform(-180, 180) if i % 2 else 0.0)
            crops.append(crop.astype(np.float16))  # as the cache stores them
            src_rows.append(transform_row(t))
            dst_rows.append(transform_row(draw_transform(t, rng, DRAWS[i % len(DRAWS)])))
        joints = rng.uniform(-1.2, 1.2, (64, 14, 3))
        share, _ = assert_batch_matches_cpu(np.stack(crops), np.stack(src_rows),
                                            np.stack(dst_rows), joints, intr)
        assert share == 0


@pytest.mark.parametrize("intr", CAMERAS)
def test_joints_round_trip_and_keep_their_mm(intr):
    """src -> dst -> src gives the joints back, and in every frame they are the same 3D points.
    Measured: 6.8e-13 mm at most (limit 1e-3 mm)."""
    rng = np.random.default_rng(3)
    b = 512
    src = torch.from_numpy(np.column_stack([
        rng.uniform(0, intr.width, b), rng.uniform(0, intr.height, b),
        rng.uniform(300, 1500, b), np.full((b, 3), 300.0), np.full(b, 128.0),
        rng.uniform(-180, 180, b) * (np.arange(b) % 2)]))
    dst = da.draw_transforms(src, STRONG, intr, torch.Generator().manual_seed(1))
    joints = torch.from_numpy(rng.uniform(-1.2, 1.2, (b, 14, 3)))
    there = da.map_joints(joints, src, dst, intr)
    back = da.map_joints(there, dst, src, intr)
    xyz = to_mm(joints.numpy(), src.numpy(), intr)
    assert np.abs(to_mm(back.numpy(), src.numpy(), intr) - xyz).max() < TOL_MM
    assert np.abs(to_mm(there.numpy(), dst.numpy(), intr) - xyz).max() < TOL_MM
    # and the uvd helpers invert each other
    uvd = da.norm_to_uvd(joints, dst, intr)
    np.testing.assert_allclose(da.uvd_to_norm(uvd, dst, intr), joints, rtol=0, atol=1e-12)


# ---- the draw ------------------------------------------------------------------------------

def _changes(src, dst, intr):
    """What moved per row: centre offset in mm (B, 3), cube factor (B,), angle change (B,)."""
    xyz = lambda rows: intr.uvd_to_xyz(rows[:, 0:3])  # noqa: E731
    offset = xyz(dst) - xyz(src)
    factor = dst[:, 5] / src[:, 5]
    turn = (dst[:, 7] - src[:, 7] + 180.0) % 360.0 - 180.0
    return offset, factor, turn


def test_draw_one_mode_per_row_with_the_configured_distributions():
    n, cfg, intr = 20_000, AugmentConfig(), NYU
    rng = np.random.default_rng(0)
    src = np.column_stack([rng.uniform(200, 440, n), rng.uniform(150, 330, n),
                           rng.uniform(500, 1000, n), np.full((n, 3), 300.0), np.full(n, 64.0),
                           rng.uniform(-180, 180, n)])
    dst = da.draw_transforms(torch.from_numpy(src), cfg, intr,
                             torch.Generator().manual_seed(0)).numpy()
    assert dst.shape == (n, 8) and np.all(dst[:, 6] == 64.0)
    moved = np.any(dst[:, 0:3] != src[:, 0:3], axis=1)
    scaled = np.any(dst[:, 3:6] != src[:, 3:6], axis=1)
    turned = dst[:, 7] != src[:, 7]
    kept = np.all(dst == src, axis=1)
    assert np.all(moved.astype(int) + scaled + turned + kept == 1)  # exactly one mode per row
    for share in (moved.mean(), scaled.mean(), turned.mean(), kept.mean()):
        assert abs(share - 0.25) < 0.015  # 1/4 each; sd of a share is 0.003
    offset, factor, turn = _changes(src, dst, intr)
    offset, factor, turn = offset[moved], factor[scaled], turn[turned]
    sigma = cfg.translation_sigma_mm
    assert np.all(np.abs(offset.mean(axis=0)) < 4 * sigma / np.sqrt(len(offset)))
    np.testing.assert_allclose(offset.std(axis=0), sigma, rtol=0.04)
    assert np.all(dst[scaled][:, 3:6] == dst[scaled][:, 3:4])  # one factor for all three sides
    assert abs(factor.mean() - 1.0) < 4 * cfg.scale_sigma / np.sqrt(len(factor))
    np.testing.assert_allclose(factor.std(), cfg.scale_sigma, rtol=0.04)
    assert np.all((-180.0 <= dst[:, 7]) & (dst[:, 7] < 180.0))
    r = cfg.rotation_deg  # U(-r, r): mean 0, sd r / sqrt(3), flat
    assert abs(turn.mean()) < 4 * r / np.sqrt(3 * len(turn))
    np.testing.assert_allclose(turn.std(), r / np.sqrt(3), rtol=0.04)
    counts, _ = np.histogram(turn, bins=8, range=(-r, r))
    assert counts.min() > 0.85 * counts.mean()


def test_draw_combined_and_the_cpu_draw_agree_in_distribution():
    n, cfg, intr = 20_000, AugmentConfig(combine=True, rotation_deg=45.0, scale_sigma=0.05,
                                         translation_sigma_mm=10.0), ICVL
    src_row = np.array([180.0, 100.0, 600.0, 250.0, 250.0, 250.0, 128.0, 170.0])
    src = np.tile(src_row, (n, 1))
    dst = da.draw_transforms(torch.from_numpy(src), cfg, intr,
                             torch.Generator().manual_seed(2)).numpy()
    t = transform_from_row(src_row, intr)
    rng = np.random.default_rng(2)
    cpu = np.stack([transform_row(draw_transform(t, rng, cfg)) for _ in range(n)])
    for rows in (dst, cpu):
        offset, factor, turn = _changes(src, rows, intr)
        np.testing.assert_allclose(offset.std(axis=0), cfg.translation_sigma_mm, rtol=0.04)
        np.testing.assert_allclose(factor.std(), cfg.scale_sigma, rtol=0.04)
        np.testing.assert_allclose(turn.std(), cfg.rotation_deg / np.sqrt(3), rtol=0.04)
        assert np.abs(turn).max() <= cfg.rotation_deg
        # 170 + U(-45, 45) wraps past 180 into [-180, -145) in 35 / 90 of the rows
        assert np.mean(rows[:, 7] < 0) == pytest.approx(35 / 90, abs=0.02)
    ours, theirs = _changes(src, dst, intr), _changes(src, cpu, intr)
    scales = (cfg.translation_sigma_mm, cfg.scale_sigma, cfg.rotation_deg)
    for a, b, scale in zip(ours, theirs, scales):  # the two draws' quantiles agree
        for q in (0.05, 0.25, 0.5, 0.75, 0.95):  # sd of a quantile difference: <= 0.03 scale
            np.testing.assert_allclose(np.quantile(a, q, axis=0), np.quantile(b, q, axis=0),
                                       rtol=0, atol=0.1 * scale)


def test_draw_a_subset_of_modes_and_a_mode_listed_twice():
    src = torch.tensor([[320.0, 240.0, 700.0, 300.0, 300.0, 300.0, 64.0, 0.0]]).repeat(6000, 1)
    dst = da.draw_transforms(src, AugmentConfig(modes=("rot", "none", "rot")), NYU,
                             torch.Generator().manual_seed(3))
    turned = dst[:, 7] != src[:, 7]
    assert torch.equal(dst[:, :7], src[:, :7].double())  # only the angle ever changes
    assert turned.double().mean().item() == pytest.approx(2 / 3, abs=0.02)  # as numpy's draw


def test_draw_is_reproducible_per_generator_seed():
    src = torch.tensor([[320.0, 240.0, 700.0, 300.0, 300.0, 300.0, 64.0, 0.0]]).repeat(16, 1)
    a = da.draw_transforms(src, STRONG, NYU, torch.Generator().manual_seed(4))
    b = da.draw_transforms(src, STRONG, NYU, torch.Generator().manual_seed(4))
    c = da.draw_transforms(src, STRONG, NYU, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---- the whole augmentation ----------------------------------------------------------------

def test_augment_batch_is_rewarp_plus_map_and_keeps_none_rows(cache):
    intr = cache.intrinsics
    crops = torch.from_numpy(np.array(cache.crops))[:, None].repeat(4, 1, 1, 1)
    src = torch.from_numpy(cache.transforms).repeat(4, 1)
    joints = torch.from_numpy(np.array(cache.joints_norm)).repeat(4, 1, 1)
    cfg = AugmentConfig(modes=("rot", "none"))
    out, dst, mapped = da.augment_batch(crops, src, joints, intr, cfg,
                                        torch.Generator().manual_seed(0))
    kept = (dst == src).all(dim=1)
    assert 0 < kept.sum() < len(kept)
    assert torch.equal(out[kept], crops[kept].float()) and out.dtype == torch.float32
    assert torch.equal(mapped[kept], joints[kept].double())
    assert torch.equal(out[~kept], da.rewarp_crops(crops, src, dst, intr)[~kept])
    assert torch.equal(mapped[~kept], da.map_joints(joints, src, dst, intr)[~kept])
    out2, dst2, none = da.augment_batch(crops, src, None, intr, cfg,
                                        torch.Generator().manual_seed(0))
    assert none is None and torch.equal(out2, out) and torch.equal(dst2, dst)


def test_sensor_noise_on_foreground_and_dropout_share():
    s, b = 64, 32
    crops = torch.full((b, 1, s, s), BACKGROUND)
    crops[:, :, 16:48, 16:48] = 0.0  # a foreground square at the centre depth
    src = torch.tensor([[320.0, 240.0, 700.0, 300.0, 300.0, 300.0, s, 0.0]]).repeat(b, 1)
    cfg = AugmentConfig(modes=("none",), depth_noise_sigma_mm=3.0)
    out, _, _ = da.augment_batch(crops, src, None, NYU, cfg, torch.Generator().manual_seed(0))
    fg = crops == 0.0
    assert torch.equal(out[~fg], crops[~fg])  # background stays background
    assert out[fg].std().item() == pytest.approx(3.0 / 150.0, rel=0.03)  # mm / half cube
    cfg = AugmentConfig(modes=("none",), pixel_dropout_p=0.2)
    out, _, _ = da.augment_batch(crops, src, None, NYU, cfg, torch.Generator().manual_seed(0))
    assert (out[fg] == BACKGROUND).float().mean().item() == pytest.approx(0.2, abs=0.01)


def test_runs_on_the_meta_device():
    """Every tensor is made on the input's device: the whole batch runs on 'meta' (no data)."""
    meta = torch.device("meta")
    crops = torch.empty(6, 1, 64, 64, dtype=torch.float16, device=meta)
    src = torch.empty(6, 8, dtype=torch.float64, device=meta)
    joints = torch.empty(6, 14, 3, device=meta)
    cfg = AugmentConfig(depth_noise_sigma_mm=2.0, pixel_dropout_p=0.1)
    for c in (cfg, STRONG):
        out, dst, mapped = da.augment_batch(crops, src, joints, NYU, c)
        assert out.device == dst.device == mapped.device == meta
        assert out.shape == (6, 1, 64, 64) and out.dtype == torch.float32
        assert dst.shape == (6, 8) and mapped.shape == (6, 14, 3)


def test_shape_errors():
    src = torch.zeros(4, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="transform rows"):
        da.rewarp_crops(torch.zeros(4, 1, 64, 64), src, src[:, :7], NYU)
    with pytest.raises(ValueError, match="crops must be"):
        da.rewarp_crops(torch.zeros(4, 64, 64), src, src, NYU)
    with pytest.raises(ValueError, match="transform rows"):
        da.map_joints(torch.zeros(4, 14, 3), src, src[:3], NYU)


# ---- crops cut from whole frames (the localiser's and the estimator's crops on a GPU) -----------

def random_frames(rng, intr, count):
    """Frames with the pixels crop_depth treats apart: 0, NaN, negative, beyond the cube."""
    frames = []
    for k in range(count):
        d = rng.uniform(200.0, 2500.0, size=(intr.height, intr.width))
        d[rng.uniform(size=d.shape) < 0.1] = 0.0
        if k % 2:
            d[rng.uniform(size=d.shape) < 0.05] = np.nan
            d[rng.uniform(size=d.shape) < 0.02] = -5.0
            frames.append(d)  # float64 mm
        else:
            frames.append(np.nan_to_num(d).clip(0).astype(np.uint16))
    return frames


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("intr", CAMERAS)
@pytest.mark.parametrize("size", [64, 128, 50])
def test_crops_cut_on_the_device_equal_crop_depth(intr, size, device):
    """Centres anywhere (boxes partly or wholly outside the frame), square and oblong cubes,
    integer and float frames: every pixel equals crop_depth's (on CPU tensors here; on the GPU
    where there is one)."""
    rng = np.random.default_rng(size)
    frames = random_frames(rng, intr, 4)
    centres = np.column_stack([rng.uniform(-60, intr.width + 60, 40),
                               rng.uniform(-60, intr.height + 60, 40),
                               rng.uniform(250.0, 1600.0, 40)])
    cubes = [300.0, 400.0, np.array([250.0, 350.0, 300.0]), np.array([420.0, 180.0, 200.0])]
    rows = rng.integers(0, len(frames), len(centres))
    expected, transforms = zip(*(crop_depth(frames[r], c, cubes[k % 4], size, intr=intr)
                                 for k, (r, c) in enumerate(zip(rows, centres))))
    batch = da.FrameBatch(frames, device, on_device=True)
    got = batch.crops(rows, transforms).cpu()
    assert got.shape == (len(centres), 1, size, size) and got.dtype == torch.float32
    np.testing.assert_array_equal(got[:, 0].numpy(), np.stack(expected))
    host = da.FrameBatch(frames, "cpu").crops(rows, transforms)  # the host path: the same
    np.testing.assert_array_equal(host.numpy(), got.numpy())


def test_frame_batches_refuse_frames_of_several_sizes():
    with pytest.raises(ValueError, match="one size"):
        da.frame_stack([np.zeros((480, 640)), np.zeros((240, 320))], "cpu")
