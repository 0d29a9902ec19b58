"""Crop cache and semi-supervised split, on tiny synthetic NYU-format datasets: cached crops and
joints equal fresh preprocessing, the cache is reused until a source file or a parameter changes,
builds are atomic, bad frames stop or are skipped, and unlabelled crops cannot reach labels."""
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import handgan.cachebuild as cachebuild
from handgan.augment import AugmentConfig
from handgan.cachebuild import build_cache, load_or_build_cache
from handgan.cachesource import CropParams
from handgan.cachestore import _TMP_MARK, CropCache
from handgan.camera import NYU
from handgan.data.folder import FolderFrames
from handgan.data.nyu import NYUSplit, depth_png_name, write_depth_png
from handgan.dataset import (
    LabeledCrops,
    UnlabeledCrops,
    all_labeled,
    all_unlabeled,
    split_labeled,
)
from handgan.errors import HandganError
from handgan.preprocess import crop_depth
from handgan.synth.generate import synthesize_dataset

from helpers import HAND, preprocess_frame

N_TRAIN = 24


@pytest.fixture(scope="module")
def source_dataset(tmp_path_factory):
    return synthesize_dataset(tmp_path_factory.mktemp("synth"), N_TRAIN, 8, seed=3, workers=1,
                              config=HAND, progress=False)


@pytest.fixture
def dataset(source_dataset, tmp_path):
    """A private copy (mtimes kept) that a test may damage."""
    return shutil.copytree(source_dataset, tmp_path / "data")


@pytest.fixture(scope="module")
def cache(source_dataset, tmp_path_factory):
    return build_cache(NYUSplit(source_dataset, "train"), tmp_path_factory.mktemp("cache"),
                       progress=False)


@pytest.fixture
def count_builds(monkeypatch):
    calls = []
    real = cachebuild._build

    def counting(*args, **kwargs):
        calls.append(args[0].key)
        return real(*args, **kwargs)

    monkeypatch.setattr(cachebuild, "_build", counting)
    return calls


def frame_png(root, i, split="train"):
    return Path(root) / split / depth_png_name(i)


# ---- building --------------------------------------------------------------------------------

def test_cache_equals_fresh_preprocessing(cache, source_dataset):
    reader = NYUSplit(source_dataset, "train")
    assert len(cache) == N_TRAIN and cache.labeled and not cache.bad_frames
    assert cache.crops.dtype == np.float16 and cache.crops.shape == (N_TRAIN, 128, 128)
    assert isinstance(cache.crops, np.memmap) and isinstance(cache.joints_norm, np.memmap)
    assert cache.joints_norm.dtype == np.float32 and cache.joints_norm.shape == (N_TRAIN, 14, 3)
    assert cache.crops.min() >= -1 and cache.crops.max() <= 1
    assert (cache.crops < 1).any(axis=(1, 2)).all()  # every crop shows some hand
    np.testing.assert_array_equal(cache.frame_index, np.arange(N_TRAIN))
    uvd, xyz = reader.joints_uvd(), reader.joints_xyz()
    for i in range(N_TRAIN):
        t = cache.transform(i)
        fresh, fresh_t = crop_depth(reader.depth(i), uvd[i, reader.centre_joint], 300.0, 128,
                                    intr=NYU)
        np.testing.assert_allclose(cache.crops[i].astype(np.float32), fresh, atol=1e-3)
        np.testing.assert_array_equal(t.M, fresh_t.M)
        np.testing.assert_array_equal(t.centre_uvd, uvd[i, reader.centre_joint])
        np.testing.assert_allclose(t.norm_to_xyz(cache.joints_norm[i]), xyz[i], atol=1e-3)
    m = cache.manifest
    assert m["params"] == {"size": 128, "cube_mm": None, "centre": "gt"}
    assert m["source"]["kind"] == "NYUSplit" and m["source"]["split"] == "train"
    assert m["fingerprint"]["files"] == N_TRAIN + 1  # the PNGs and joint_data.mat
    assert m["n"] == N_TRAIN and len(m["checksum"]) == 64
    cache.verify(full=True)


def test_size_64_cube_and_com_centre(source_dataset, tmp_path):
    reader = NYUSplit(source_dataset, "test")
    params = CropParams(size=64, cube_mm=250.0, centre="com")
    small = build_cache(reader, tmp_path, params, progress=False)
    assert small.crops.shape == (8, 64, 64)
    depth = reader.depth(5)
    crop, t, joints = preprocess_frame(depth, NYU, 250.0, 64, joints_xyz=reader.joints_xyz()[5])
    np.testing.assert_allclose(small.crops[5].astype(np.float32), crop, atol=1e-3)
    np.testing.assert_allclose(small.joints_norm[5], joints, atol=1e-6)
    np.testing.assert_array_equal(small.transform(5).cube_mm, [250.0] * 3)


def test_parallel_build_equals_serial(source_dataset, tmp_path, cache):
    parallel = build_cache(NYUSplit(source_dataset, "train"), tmp_path, progress=False,
                           workers=2)
    for name in ("crops", "joints_norm", "transforms", "frame_index"):
        np.testing.assert_array_equal(getattr(parallel, name), getattr(cache, name))


def test_reused_until_a_source_file_or_param_changes(dataset, tmp_path, count_builds):
    reader = NYUSplit(dataset, "train")
    root = tmp_path / "caches"
    first = load_or_build_cache(reader, root, progress=False)
    again = load_or_build_cache(NYUSplit(dataset, "train"), root, progress=False, verify="full")
    assert len(count_builds) == 1 and again.path == first.path

    load_or_build_cache(reader, root, CropParams(size=64), progress=False)
    assert len(count_builds) == 2  # other params: another cache beside the first
    assert load_or_build_cache(reader, root, progress=False).path == first.path
    assert len(count_builds) == 2

    png = frame_png(dataset, 5)
    st = png.stat()
    os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
    touched = load_or_build_cache(NYUSplit(dataset, "train"), root, progress=False)
    assert len(count_builds) == 3 and touched.path != first.path
    assert not first.path.exists()  # the cache of the old files is removed, the 64 px one kept
    assert len([p for p in root.iterdir()]) == 2

    depth = reader.depth(5)
    depth[depth > 0] += 7.0  # different bytes
    write_depth_png(png, depth)
    changed = load_or_build_cache(NYUSplit(dataset, "train"), root, progress=False)
    assert len(count_builds) == 4 and changed.path != touched.path
    t = changed.transform(5)
    assert changed.crops[5].astype(np.float32) == pytest.approx(
        crop_depth(depth, t.centre_uvd, 300.0, 128, intr=NYU)[0], abs=1e-3)


def test_damaged_cache_is_rebuilt(source_dataset, tmp_path, count_builds):
    reader = NYUSplit(source_dataset, "train")
    cache = load_or_build_cache(reader, tmp_path, progress=False)
    crops_file = cache.path / "crops.npy"
    del cache
    with open(crops_file, "r+b") as f:  # flip one byte of one crop
        f.seek(-5000, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    load_or_build_cache(reader, tmp_path, progress=False)
    assert len(count_builds) == 2
    with open(crops_file, "r+b") as f:  # truncated
        f.truncate(1000)
    rebuilt = load_or_build_cache(reader, tmp_path, progress=False)
    assert len(count_builds) == 3 and len(rebuilt) == N_TRAIN
    rebuilt.verify(full=True)
    (rebuilt.path / "manifest.json").write_text("{not json")
    load_or_build_cache(reader, tmp_path, progress=False)
    assert len(count_builds) == 4


def test_interrupted_build_leaves_no_cache(source_dataset, tmp_path, monkeypatch, count_builds):
    reader = NYUSplit(source_dataset, "train")
    real = cachebuild._crop_frame

    def crash_at_10(reader, i, *args):
        if i == 10:
            raise RuntimeError("simulated crash")
        return real(reader, i, *args)

    monkeypatch.setattr(cachebuild, "_crop_frame", crash_at_10)
    with pytest.raises(RuntimeError, match="simulated crash"):
        load_or_build_cache(reader, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither a cache nor a temp folder
    monkeypatch.setattr(cachebuild, "_crop_frame", real)

    # a build killed with SIGKILL leaves its temp folder; the next build removes it
    abandoned = tmp_path / f".somekey{_TMP_MARK}999999999-abcdef"
    abandoned.mkdir()
    (abandoned / "crops.npy").write_bytes(b"partial")
    cache = load_or_build_cache(reader, tmp_path, progress=False)
    assert len(count_builds) == 2 and len(cache) == N_TRAIN
    assert [p.name for p in tmp_path.iterdir()] == [cache.path.name]


# ---- bad frames ------------------------------------------------------------------------------

def damage_two_frames(root):
    frame_png(root, 3).write_bytes(b"\x89PNG\r\n\x1a\n this is not a png at all" * 4)
    write_depth_png(frame_png(root, 7), np.zeros((480, 640), np.float32))


def test_bad_frames_stop_the_build_by_default(dataset, tmp_path):
    damage_two_frames(dataset)
    reader = NYUSplit(dataset, "train")
    with pytest.raises(HandganError) as info:
        load_or_build_cache(reader, tmp_path / "caches", progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert depth_png_name(3) in message and depth_png_name(7) in message
    assert "2 bad frames" in message and "skip" in message
    assert list((tmp_path / "caches").iterdir()) == []  # nothing to train on by mistake


def test_bad_frames_skipped_and_recorded(dataset, tmp_path):
    damage_two_frames(dataset)
    reader = NYUSplit(dataset, "train")
    cache = load_or_build_cache(reader, tmp_path / "caches", progress=False, on_bad="skip")
    assert len(cache) == N_TRAIN - 2 and len(cache.bad_frames) == 2
    assert [b.index for b in cache.bad_frames] == [3, 7]
    assert cache.bad_frames[0].file == str(frame_png(dataset, 3))
    assert "PNG" in cache.bad_frames[0].reason
    assert cache.bad_frames[1].reason.startswith("no depth")
    assert cache.manifest["bad_frames"][1]["index"] == 7
    np.testing.assert_array_equal(cache.frame_index, [i for i in range(N_TRAIN) if i not in (3, 7)])
    xyz = reader.joints_xyz()
    for row in (2, 3, 6):  # rows after a skipped frame still hold their own frame's joints
        frame = cache.frame_index[row]
        np.testing.assert_allclose(cache.transform(row).norm_to_xyz(cache.joints_norm[row]),
                                   xyz[frame], atol=1e-3)
    # the recorded bad frames still stop a run that asks for "stop"
    with pytest.raises(HandganError, match="2 bad frames"):
        load_or_build_cache(reader, tmp_path / "caches", progress=False)


class NaNLabels(NYUSplit):
    def joints_xyz(self):
        xyz = super().joints_xyz()
        xyz[5, 2, 0] = np.nan
        return xyz


def test_nan_labels_are_bad_frames(source_dataset, tmp_path):
    cache = build_cache(NaNLabels(source_dataset, "train"), tmp_path, progress=False,
                        on_bad="skip")
    assert [(b.index, b.reason) for b in cache.bad_frames] == [
        (5, "labels have NaN or inf values")]
    assert 5 not in cache.frame_index


# ---- unlabelled source -----------------------------------------------------------------------

def test_unlabelled_folder_builds_com_cache(source_dataset, tmp_path, count_builds):
    reader_nyu = NYUSplit(source_dataset, "test")
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(4):
        depth = reader_nyu.depth(i).astype(np.uint16)
        Image.fromarray(depth).save(folder / f"frame_{i:03d}.png")  # 16-bit greyscale mm
    reader = FolderFrames(folder, NYU, cube_mm=300.0)
    cache = load_or_build_cache(reader, tmp_path / "caches", CropParams(centre="com"),
                                progress=False)
    assert not cache.labeled and cache.joints_norm is None and len(cache) == 4
    assert cache.manifest["params"]["centre"] == "com"
    assert not (cache.path / "joints_norm.npy").exists()
    crop, t, _ = preprocess_frame(reader.depth(2), NYU, 300.0, 128)
    np.testing.assert_allclose(cache.crops[2].astype(np.float32), crop, atol=1e-3)
    np.testing.assert_allclose(cache.transform(2).centre_uvd, t.centre_uvd)
    # "gt" cannot apply without labels: the same (com) cache is reused
    assert load_or_build_cache(reader, tmp_path / "caches", progress=False).path == cache.path
    assert len(count_builds) == 1
    other_cube = FolderFrames(folder, NYU, cube_mm=250.0)  # the reader's cube is part of the key
    assert load_or_build_cache(other_cube, tmp_path / "caches", progress=False).path != cache.path
    with pytest.raises(HandganError, match="no labels"):
        split_labeled(cache, 0.5)
    with pytest.raises(HandganError, match="no labels"):
        all_labeled(cache)
    unlabeled = all_unlabeled(cache, augment=AugmentConfig())
    assert unlabeled[3].shape == (1, 128, 128)


# ---- split -----------------------------------------------------------------------------------

def test_split_sizes_seeds_and_coverage(cache):
    for kwargs, n_labeled in [({"labeled_fraction": 0.25}, 6), ({"labeled_count": 5}, 5),
                              ({"labeled_fraction": 0.01}, 1), ({"labeled_fraction": 1.0}, 24),
                              ({"labeled_fraction": 0.1}, 2)]:  # 2.4 -> 2
        labeled, unlabeled = split_labeled(cache, **kwargs, seed=1)
        assert len(labeled) == n_labeled and len(unlabeled) == N_TRAIN - n_labeled
        assert not set(labeled.indices) & set(unlabeled.indices)
        assert sorted([*labeled.indices, *unlabeled.indices]) == list(range(N_TRAIN))
    a, _ = split_labeled(cache, 0.25, seed=7)
    b, _ = split_labeled(cache, 0.25, seed=7)
    c, _ = split_labeled(cache, 0.25, seed=8)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert list(a.indices) != list(c.indices)
    bigger, _ = split_labeled(cache, 0.5, seed=7)
    assert set(a.indices) <= set(bigger.indices)  # more labels add to the smaller set
    crop, joints = a[0]
    assert crop.dtype == torch.float32 and crop.shape == (1, 128, 128)
    assert joints.dtype == torch.float32 and joints.shape == (14, 3)
    np.testing.assert_array_equal(joints.numpy(), cache.joints_norm[a.indices[0]])
    assert len(all_labeled(cache)) == N_TRAIN


@pytest.mark.parametrize("kwargs, fragment", [
    ({"labeled_fraction": 0.0}, "(0, 1]"),
    ({"labeled_fraction": 1.5}, "(0, 1]"),
    ({"labeled_fraction": float("nan")}, "(0, 1]"),
    ({"labeled_count": 0}, "[1, 24]"),
    ({"labeled_count": 25}, "[1, 24]"),
    ({"labeled_count": 2.5}, "whole number"),
    ({"labeled_fraction": 0.5, "labeled_count": 3}, "not both"),
    ({}, "neither"),
    ({"labeled_fraction": 0.5, "seed": -1}, "seed"),
])
def test_split_errors(cache, kwargs, fragment):
    with pytest.raises(HandganError) as info:
        split_labeled(cache, **kwargs)
    assert fragment in str(info.value)


def test_unlabeled_crops_cannot_reach_labels(cache):
    labeled, unlabeled = split_labeled(cache, 0.5, seed=0, augment=AugmentConfig())
    reached = []
    frontier = [unlabeled]
    for _ in range(3):  # the dataset's attributes, theirs, and theirs
        next_frontier = []
        for obj in frontier:
            values = list(vars(obj).values()) if hasattr(obj, "__dict__") else []
            if isinstance(obj, (list, tuple, set)):
                values = list(obj)
            elif isinstance(obj, dict):
                values = list(obj.values())
            reached += values
            next_frontier += values
        frontier = next_frontier
    joints_file = str(cache.path / "joints_norm.npy")
    for value in reached:
        assert value is not cache and value is not cache.joints_norm and value is not labeled
        assert not isinstance(value, (CropCache, LabeledCrops))
        if isinstance(value, np.ndarray):
            assert not np.shares_memory(value, cache.joints_norm)
            assert getattr(value, "filename", None) != joints_file
    item = unlabeled[0]
    assert isinstance(item, torch.Tensor) and item.shape == (1, 128, 128)
    assert not hasattr(unlabeled, "joints_norm")


# ---- datasets --------------------------------------------------------------------------------

def test_augmentation_is_reproducible_per_seed_epoch_and_item(cache):
    aug = AugmentConfig(combine=True)
    data = LabeledCrops(cache, np.arange(len(cache)), augment=aug, seed=3)
    crop0, joints0 = data[4]
    crop1, joints1 = LabeledCrops(cache, np.arange(len(cache)), augment=aug, seed=3)[4]
    assert torch.equal(crop0, crop1) and torch.equal(joints0, joints1)
    data.set_epoch(1)
    crop2, joints2 = data[4]
    assert not torch.equal(crop0, crop2) and not torch.equal(joints0, joints2)
    plain_crop, plain_joints = all_labeled(cache)[4]
    assert not torch.equal(crop0, plain_crop)
    assert crop0.min() >= -1 and crop0.max() <= 1
    # the same crop augmented as unlabelled gets the same image
    image = all_unlabeled(cache, augment=aug, seed=3)[4]
    assert torch.equal(image, crop0)


def test_dataloader_and_batched_path(cache):
    data = all_labeled(cache)
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    crops, joints = next(iter(loader))
    assert crops.shape == (8, 1, 128, 128) and joints.shape == (8, 14, 3)
    positions = np.array([5, 0, 17, 5, 9])
    batch_crops, batch_joints = data.sample_batch(positions)
    items = [data[int(k)] for k in positions]
    assert torch.equal(batch_crops, torch.stack([c for c, _ in items]))
    assert torch.equal(batch_joints, torch.stack([j for _, j in items]))
    # with rays: each crop's centre ray, the batched path and the item path alike
    _, _, rays = data.sample_batch(positions, rays=True)
    assert np.allclose(rays.numpy(), [data.transform(int(k)).ray for k in positions])
    aug = LabeledCrops(cache, np.arange(len(cache)), augment=AugmentConfig(), seed=3)
    _, joints_a, rays_a = aug.sample_batch(positions, rays=True)
    assert torch.equal(joints_a, aug.sample_batch(positions)[1])
    assert not np.allclose(rays_a.numpy(), rays.numpy())  # the augmented crops' new centres
    _, unlabeled = split_labeled(cache, 0.5)
    assert torch.equal(unlabeled.sample_batch([3, 1]),
                       torch.stack([unlabeled[3], unlabeled[1]]))


def test_pickled_datasets_reopen_the_memmaps(cache):
    labeled, unlabeled = split_labeled(cache, 0.5, augment=AugmentConfig())
    for data in (labeled, unlabeled):
        blob = pickle.dumps(data)
        assert len(blob) < 20_000  # file references, not the crops (24 x 32 KB)
        copy = pickle.loads(blob)
        assert isinstance(copy.crops, np.memmap)
        first, again = data[2], copy[2]
        if isinstance(first, tuple):
            assert all(torch.equal(a, b) for a, b in zip(first, again))
        else:
            assert torch.equal(first, again)


@pytest.mark.parametrize("kwargs", [{"size": 96}, {"size": True}, {"cube_mm": -5.0},
                                    {"cube_mm": float("inf")}, {"centre": "palm"}])
def test_crop_params_errors(kwargs):
    with pytest.raises(HandganError):
        CropParams(**kwargs)


def test_argument_errors(source_dataset, tmp_path):
    reader = NYUSplit(source_dataset, "test")
    with pytest.raises(HandganError, match="on_bad"):
        build_cache(reader, tmp_path, on_bad="ignore")
    with pytest.raises(HandganError, match="verify"):
        load_or_build_cache(reader, tmp_path, verify="never")
    with pytest.raises(HandganError, match="crop cache"):
        CropCache(tmp_path)
    with pytest.raises(HandganError, match="seed"):
        UnlabeledCrops(np.zeros((2, 64, 64), np.float16), [0, 1], seed=-3)


def test_two_views_match_augmentation_of_labelled_crops(cache):
    # View B of an unlabelled crop is the crop augmented with its own seeded draw, and the map
    # carries the true joints of view A exactly where augmenting the labelled crop puts them.
    from handgan.augment import augment_crop
    from handgan.batches import UnlabeledPool
    view_aug = AugmentConfig(combine=True)
    labeled, unlabeled = split_labeled(cache, 0.25, seed=2)
    unlabeled.set_epoch(3)
    positions = np.array([4, 0, 7])
    x_a, x_b, maps = unlabeled.sample_views(positions, view_aug)
    assert x_a.shape == x_b.shape == (3, 1, 128, 128) and len(maps) == 3
    rows = unlabeled.indices[positions]
    joints_a = np.asarray(cache.joints_norm[rows], np.float64)
    mapped = maps.apply(joints_a)
    for i, (k, row) in enumerate(zip(positions, rows)):
        crop = np.asarray(cache.crops[row], np.float32)
        assert np.array_equal(x_a[i, 0].numpy(), crop)  # view A: the cached crop as it is
        t = unlabeled.transform(int(k))
        rng = np.random.default_rng((2, 3, int(row), 1))
        crop_b, t_b, joints_b = augment_crop(crop, t, joints_a[i], rng, view_aug)
        assert t_b.rotation_deg != 0.0
        assert np.array_equal(x_b[i, 0].numpy(), crop_b)
        np.testing.assert_allclose(mapped[i], joints_b, atol=1e-9)
        np.testing.assert_allclose(t_b.norm_to_xyz(mapped[i]), t.norm_to_xyz(joints_a[i]),
                                   atol=1e-6)  # the same 3D joints, in mm
    # A pool of two parts gives the same views in the order asked for.
    first, second = split_labeled(cache, 0.5, seed=2)[1], unlabeled
    second.set_epoch(3)
    first.set_epoch(3)
    pool = UnlabeledPool([first, second])
    ask = np.array([len(first) + 4, 1, len(first), 0])
    pa, pb, pm = pool.sample_views(ask, view_aug)
    for i, pos in enumerate(ask):
        part, local = (second, pos - len(first)) if pos >= len(first) else (first, pos)
        a, b, m = part.sample_views(np.array([local]), view_aug)
        assert torch.equal(pa[i], a[0]) and torch.equal(pb[i], b[0])
        np.testing.assert_array_equal(pm.apply(joints_a[:1].repeat(4, 0))[i],
                                      m.apply(joints_a[:1])[0])
    with pytest.raises(ValueError, match="poses for"):
        maps.apply(joints_a[:2])


