"""NYU format: depth PNGs and joint_data.mat checked against independent decoders, split reading,
and errors that name the file and the problem."""
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from handgan.camera import NYU
from handgan.data.nyu import (
    NYUSplit,
    decode_nyu_depth,
    depth_png_name,
    encode_nyu_depth,
    encode_png_rgb,
    list_splits,
    read_depth_png,
    read_joint_data,
    write_depth_png,
    write_joint_data,
)
from handgan.errors import HandganError
from handgan.joints import NYU_EVAL_IDS, NYU_JOINT_NAMES

NYU_TEST_LABELS = Path("/work/shared/eval-data/groundtruth/nyu/nyu_test_groundtruth_label.txt")


def hand_depth(seed=0, h=480, w=640):
    """Mostly-zero frame with a noisy blob of whole-mm depths, plus the extremes of the format."""
    rng = np.random.default_rng(seed)
    depth = np.zeros((h, w), np.uint16)
    depth[100:300, 200:400] = rng.integers(200, 2000, (200, 200))
    depth[0, :4] = [1, 255, 256, 65535]
    depth[1, :3] = [257, 4095, 65280]
    return depth


def consistent_labels(n_views, n_frames, seed=0):
    """uvd with a recognisable value per (view, frame, joint) and the xyz NYU derives from it."""
    rng = np.random.default_rng(seed)
    uvd = np.empty((n_views, n_frames, 36, 3))
    uvd[..., 0] = rng.uniform(100, 540, (n_views, n_frames, 36))
    uvd[..., 1] = rng.uniform(80, 400, (n_views, n_frames, 36))
    view, frame, joint = np.ix_(range(n_views), range(n_frames), range(36))
    uvd[..., 2] = 500 + 1000 * view + 10 * frame + joint  # d mm identifies each entry
    return uvd, NYU.uvd_to_xyz(uvd)


def make_split(folder, n_frames, present, n_views=1, png_view=1):
    folder.mkdir(parents=True)
    uvd, xyz = consistent_labels(n_views, n_frames)
    write_joint_data(folder / "joint_data.mat", uvd, xyz)
    for k in present:
        write_depth_png(folder / depth_png_name(k, png_view), hand_depth(seed=k))
    return uvd, xyz


# --- depth PNG ---------------------------------------------------------------------------------


@pytest.mark.parametrize("deflate", ["zlib", "isal"])
def test_depth_png_decodes_independently(tmp_path, deflate):
    depth = hand_depth()
    path = tmp_path / "depth_1_0000001.png"
    write_depth_png(path, depth, deflate=deflate)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (640, 480)
        rgb = np.asarray(image)
    assert path.read_bytes()[24:26] == bytes([8, 2])  # IHDR: bit depth 8, colour type 2 (RGB)
    assert rgb.dtype == np.uint8
    assert np.all(rgb[..., 0] == 0)
    np.testing.assert_array_equal(rgb[..., 1].astype(np.int64) * 256 + rgb[..., 2], depth)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


@pytest.mark.parametrize("level,deflate", [(0, "zlib"), (1, "zlib"), (6, "zlib"), (0, "isal"),
                                           (1, "isal"), (3, "isal")])
def test_depth_png_round_trip(tmp_path, level, deflate):
    depth = hand_depth(seed=level).astype(np.float64)  # whole-mm floats are accepted too
    write_depth_png(tmp_path / "d.png", depth, compress_level=level, deflate=deflate)
    out = read_depth_png(tmp_path / "d.png")
    assert out.dtype == np.float32 and out.shape == (480, 640)
    np.testing.assert_array_equal(out, depth)


def test_isal_and_zlib_pngs_hold_the_same_image():
    depth = hand_depth(seed=3)
    pngs = [encode_png_rgb(encode_nyu_depth(depth), deflate=d) for d in ("zlib", "isal")]
    assert pngs[0] != pngs[1] and pngs[0][:33] == pngs[1][:33]  # signature + the same IHDR
    images = [np.asarray(Image.open(io.BytesIO(p))) for p in pngs]
    np.testing.assert_array_equal(images[0], images[1])
    assert encode_png_rgb(encode_nyu_depth(depth), deflate="isal") == pngs[1]  # deterministic
    with pytest.raises(ValueError, match="deflate"):
        encode_png_rgb(encode_nyu_depth(depth), deflate="lzma")


def test_depth_codec_rejects_bad_values():
    for bad in (np.array([[-1.0]]), np.array([[65536]]), np.array([[1.5]]), np.array([[np.nan]]),
                np.zeros(4), np.zeros((2, 2, 2))):
        with pytest.raises(ValueError):
            encode_nyu_depth(bad)
    with pytest.raises(ValueError):
        decode_nyu_depth(np.zeros((2, 2), np.uint8))
    assert decode_nyu_depth(encode_nyu_depth(np.array([[65535, 0, 300]], np.int64))).tolist() == [
        [65535.0, 0.0, 300.0]
    ]


def test_all_zero_depth_reads(tmp_path):
    write_depth_png(tmp_path / "z.png", np.zeros((480, 640), np.uint16))
    assert not read_depth_png(tmp_path / "z.png").any()


# --- joint_data.mat ----------------------------------------------------------------------------


def test_joint_data_loads_with_scipy(tmp_path):
    uvd, xyz = consistent_labels(1, 5)
    path = tmp_path / "joint_data.mat"
    write_joint_data(path, uvd[0], xyz[0])  # (frames, 36, 3) is written as one view
    assert path.read_bytes().startswith(b"MATLAB 5.0 MAT-file")
    mat = scipy.io.loadmat(path)
    assert {"joint_names", "joint_uvd", "joint_xyz"} <= set(mat)
    for key, want in (("joint_uvd", uvd), ("joint_xyz", xyz)):
        assert mat[key].shape == (1, 5, 36, 3) and mat[key].dtype == np.float64
        np.testing.assert_array_equal(mat[key], want)
    names = mat["joint_names"]
    assert names.shape == (1, 36) and names.dtype == object  # a cell array
    assert [str(n[0]) for n in names[0]] == list(NYU_JOINT_NAMES)


def test_joint_data_bytes_are_deterministic(tmp_path):
    uvd, xyz = consistent_labels(1, 3)
    write_joint_data(tmp_path / "a.mat", uvd, xyz)
    write_joint_data(tmp_path / "b.mat", uvd, xyz)
    assert (tmp_path / "a.mat").read_bytes() == (tmp_path / "b.mat").read_bytes()


def test_three_view_mat_reads_view_1_by_default(tmp_path):
    uvd, xyz = consistent_labels(3, 4)
    write_joint_data(tmp_path / "joint_data.mat", uvd, xyz)
    names, uvd1, xyz1 = read_joint_data(tmp_path / "joint_data.mat")
    assert names == list(NYU_JOINT_NAMES)
    assert uvd1.shape == (4, 36, 3) and uvd1.dtype == np.float64
    np.testing.assert_array_equal(uvd1, uvd[0])
    np.testing.assert_array_equal(xyz1, xyz[0])
    _, uvd2, xyz2 = read_joint_data(tmp_path / "joint_data.mat", view=2)
    np.testing.assert_array_equal(uvd2, uvd[1])
    np.testing.assert_array_equal(xyz2, xyz[1])


# --- split folders -----------------------------------------------------------------------------


def test_split_skips_missing_frames(tmp_path):
    uvd, xyz = make_split(tmp_path / "train", 3, present=[0, 2])
    (tmp_path / "train" / "depth_2_0000002.png").write_bytes(b"other view, ignored")
    (tmp_path / "test_1").mkdir()  # no joint_data.mat: not a split
    assert list_splits(tmp_path) == ["train"]

    split = NYUSplit(tmp_path, "train")
    assert len(split) == 2
    assert split.frame_ids.tolist() == [0, 2]
    assert split.frame_path(1).name == "depth_1_0000003.png"
    assert split.intrinsics == NYU
    assert split.joint_names == tuple(NYU_JOINT_NAMES[j] for j in NYU_EVAL_IDS)
    np.testing.assert_array_equal(split.joints_uvd(), uvd[0][[0, 2]][:, list(NYU_EVAL_IDS)])
    np.testing.assert_array_equal(split.joints_xyz(), xyz[0][[0, 2]][:, list(NYU_EVAL_IDS)])
    # d = 500 + 10 frame + joint: the eval set really is ids 0, 3, ..., 32 of rows 0 and 2
    assert split.joints_uvd()[1, :, 2].tolist() == [520 + j for j in NYU_EVAL_IDS]
    np.testing.assert_allclose(NYU.uvd_to_xyz(split.joints_uvd()), split.joints_xyz(), atol=1e-6)
    depth = split.depth(1)
    assert depth.shape == (480, 640) and depth.dtype == np.float32
    np.testing.assert_array_equal(depth, hand_depth(seed=2))

    all36 = NYUSplit(tmp_path, "train", joints="all36")
    assert all36.joints_xyz().shape == (2, 36, 3) and all36.joint_names == NYU_JOINT_NAMES


def test_split_view_2_reads_depth_2_frames(tmp_path):
    uvd, _ = make_split(tmp_path / "test", 2, present=[1], n_views=3, png_view=2)
    split = NYUSplit(tmp_path, "test", view=2, joints="all36")
    assert split.frame_ids.tolist() == [1] and split.frame_path(0).name == "depth_2_0000002.png"
    np.testing.assert_array_equal(split.joints_uvd(), uvd[1, [1]])
    with pytest.raises(HandganError, match="depth_1_"):
        NYUSplit(tmp_path, "test")  # view 1 has no PNGs in this folder


def test_split_errors(tmp_path):
    with pytest.raises(HandganError, match="nope.*not found"):
        NYUSplit(tmp_path, "nope")
    (tmp_path / "train").mkdir()
    with pytest.raises(HandganError, match="joint_data.mat"):
        NYUSplit(tmp_path, "train")
    make_split(tmp_path / "test", 3, present=[])
    with pytest.raises(HandganError, match="none of the 3"):
        NYUSplit(tmp_path, "test")
    with pytest.raises(HandganError, match="joint set"):
        NYUSplit(tmp_path, "test", joints="eval15")
    with pytest.raises(HandganError, match="not found"):
        list_splits(tmp_path / "missing")


def test_split_rejects_wrong_frame_size(tmp_path):
    make_split(tmp_path / "train", 1, present=[])
    write_depth_png(tmp_path / "train" / depth_png_name(0), np.zeros((240, 320), np.uint16))
    with pytest.raises(HandganError, match="depth_1_0000001.png.*320x240, expected 640x480"):
        NYUSplit(tmp_path).depth(0)


def test_real_nyu_test_labels_round_trip(tmp_path):
    if not NYU_TEST_LABELS.is_file():
        pytest.skip(f"NYU test labels not available at {NYU_TEST_LABELS}")
    labels_uvd = np.loadtxt(NYU_TEST_LABELS).reshape(-1, 14, 3)  # NYU eval order (u px, v px, d mm)
    assert labels_uvd.shape == (8252, 14, 3)
    uvd = np.zeros((1, len(labels_uvd), 36, 3))
    uvd[0][:, list(NYU_EVAL_IDS)] = labels_uvd
    folder = tmp_path / "test"
    folder.mkdir()
    write_joint_data(folder / "joint_data.mat", uvd, NYU.uvd_to_xyz(uvd))

    names, uvd_read, xyz_read = read_joint_data(folder / "joint_data.mat")
    assert names == list(NYU_JOINT_NAMES) and uvd_read.shape == (8252, 36, 3)
    eval_uvd, eval_xyz = uvd_read[:, list(NYU_EVAL_IDS)], xyz_read[:, list(NYU_EVAL_IDS)]
    np.testing.assert_array_equal(eval_uvd, labels_uvd)
    np.testing.assert_allclose(NYU.xyz_to_uvd(eval_xyz), labels_uvd, rtol=0, atol=1e-6)
    np.testing.assert_allclose(NYU.uvd_to_xyz(eval_uvd), eval_xyz, rtol=0, atol=1e-6)

    # The split view of the same labels: only the frames with a PNG, in .mat row order.
    for k in (0, 8251):
        write_depth_png(folder / depth_png_name(k), np.zeros((480, 640), np.uint16))
    split = NYUSplit(tmp_path, "test")
    assert split.frame_ids.tolist() == [0, 8251]
    np.testing.assert_array_equal(split.joints_uvd(), labels_uvd[[0, 8251]])


# --- error messages ----------------------------------------------------------------------------


def assert_error(fn, path, *fragments):
    with pytest.raises(HandganError) as info:
        fn(path)
    message = str(info.value)
    assert path.name in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_png_errors_name_file_and_problem(tmp_path):
    assert_error(read_depth_png, tmp_path / "missing.png", "not found")

    full = tmp_path / "full.png"
    write_depth_png(full, hand_depth())
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert_error(read_depth_png, truncated, "truncated or corrupt")

    grey = tmp_path / "grey.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(grey)
    assert_error(read_depth_png, grey, "expected 8-bit RGB", "mode 'L'")

    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert_error(read_depth_png, text, "not a PNG")


def test_16_bit_rgb_png_is_rejected(tmp_path):
    # Pillow cannot write 48-bit RGB and reads it as 8-bit 'RGB', so build the file by hand.
    def chunk(kind, body):
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + bytes(2 * 3 * 2) for _ in range(2))  # 2x2, filter byte + 12 bytes
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    path = tmp_path / "deep.png"
    path.write_bytes(png)
    with Image.open(path) as image:
        assert image.mode == "RGB"  # why the header check is needed
    assert_error(read_depth_png, path, "16-bit RGB")


def test_mat_errors_name_file_and_problem(tmp_path):
    uvd, xyz = consistent_labels(1, 2)

    assert_error(read_joint_data, tmp_path / "missing.mat", "not found")

    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"\x00" * 200)
    assert_error(read_joint_data, garbage, "not a readable")

    no_xyz = tmp_path / "no_xyz.mat"
    scipy.io.savemat(no_xyz, {"joint_uvd": uvd})
    assert_error(read_joint_data, no_xyz, "missing", "joint_xyz")

    wrong_shape = tmp_path / "wrong_shape.mat"
    scipy.io.savemat(wrong_shape, {"joint_uvd": uvd[..., :21, :], "joint_xyz": xyz[..., :21, :]})
    assert_error(read_joint_data, wrong_shape, "(1, 2, 21, 3)", "expected (views, frames, 36, 3)")

    mismatch = tmp_path / "mismatch.mat"
    scipy.io.savemat(mismatch, {"joint_uvd": uvd, "joint_xyz": xyz[:, :1]})
    assert_error(read_joint_data, mismatch, "(1, 2, 36, 3)", "(1, 1, 36, 3)")

    nan = tmp_path / "nan.mat"
    xyz_nan = xyz.copy()
    xyz_nan[0, 1, 5, 2] = np.nan
    scipy.io.savemat(nan, {"joint_uvd": uvd, "joint_xyz": xyz_nan})
    assert_error(read_joint_data, nan, "joint_xyz", "NaN", "frame row 1 joint 5")

    ok = tmp_path / "joint_data.mat"
    write_joint_data(ok, uvd, xyz)
    assert_error(lambda p: read_joint_data(p, view=2), ok, "view 2 out of range", "1 view")
    assert_error(lambda p: read_joint_data(p, view=0), ok, "view 0 out of range")


def test_writers_reject_bad_arrays(tmp_path):
    uvd, xyz = consistent_labels(1, 2)
    with pytest.raises(ValueError):
        write_joint_data(tmp_path / "a.mat", uvd[..., :14, :], xyz[..., :14, :])
    with pytest.raises(ValueError):
        write_joint_data(tmp_path / "a.mat", uvd, xyz[:, :1])
    with pytest.raises(ValueError):
        write_joint_data(tmp_path / "a.mat", uvd * np.nan, xyz)
    with pytest.raises(ValueError):
        write_depth_png(tmp_path / "d.png", np.full((4, 4), 70000))
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp files left
