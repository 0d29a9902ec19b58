"""ICVL, MSRA and plain-folder readers: tiny datasets written byte-exactly in each real format are
read back (depth, joints, camera conventions, splits), and bad files raise one-line errors that
name the file and the problem."""
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handgan.camera import ICVL, MSRA, NYU, Intrinsics
from handgan.data.folder import FolderFrames, parse_intrinsics
from handgan.data.icvl import ICVL_JOINT_NAMES, ICVLSplit, read_depth_png16, read_icvl_labels
from handgan.data.msra import (
    MSRA_FAULTY_FRAMES,
    MSRA_JOINT_NAMES,
    MSRADataset,
    msra_fold,
    read_depth_bin,
    read_joint_txt,
)
from handgan.errors import HandganError

ICVL_GT = Path("/work/shared/eval-data/groundtruth/icvl")


def assert_error(fn, path, *fragments):
    """fn() raises HandganError whose one-line message names ``path`` and every fragment."""
    with pytest.raises(HandganError) as info:
        fn()
    message = str(info.value)
    assert Path(path).name in message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def write_png16(path, depth):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(depth, dtype=np.uint16)).save(path)  # mode 'I;16' -> 16-bit grey


def frame_depth(seed, h=240, w=320):
    rng = np.random.default_rng(seed)
    depth = np.zeros((h, w), np.uint16)
    depth[h // 4:3 * h // 4, w // 4:3 * w // 4] = rng.integers(200, 1500, (h - h // 2, w - w // 2))
    depth[0, :3] = [1, 65535, 256]
    return depth


# --- ICVL --------------------------------------------------------------------------------------


def icvl_uvd(n, seed):
    """Labels as the real files print them: 3 decimals, u in [0, 320), v in [0, 240), d in mm."""
    rng = np.random.default_rng(seed)
    low, high = (50, 40, 250), (270, 200, 600)  # u px, v px, d mm
    uvd = rng.uniform(low, high, (n, 16, 3))
    return np.round(uvd, 3)


def label_line(relpath, uvd):
    return relpath + " " + " ".join(f"{v:.3f}" for v in uvd.ravel()) + "\n"


def write_labels(path, relpaths, uvd):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(label_line(r, u) for r, u in zip(relpaths, uvd)))


TRAIN_RELPATHS = [
    "201403121135/image_0000.png",
    "45/201403121135/image_0000.png",  # rotated copies live under short folder names
    "201403121135/image_0001.png",
    "-22-5/201403121135/image_0001.png",
    "201406191044/image_0000.png",
]


def make_icvl_archive(root):
    """ROOT/Training/labels.txt + Depth, ROOT/Testing/test_seq_{1,2}.txt + Depth."""
    train_uvd = icvl_uvd(len(TRAIN_RELPATHS), 1)
    write_labels(root / "Training" / "labels.txt", TRAIN_RELPATHS, train_uvd)
    for k, rel in enumerate(TRAIN_RELPATHS):
        write_png16(root / "Training" / "Depth" / rel, frame_depth(k))
    tests = {}
    for seq, n in (("test_seq_1", 3), ("test_seq_2", 2)):
        rels = [f"{seq}/image_{k:04d}.png" for k in range(n)]
        uvd = icvl_uvd(n, len(seq) + n)
        write_labels(root / "Testing" / f"{seq}.txt", rels, uvd)
        for k, rel in enumerate(rels):
            write_png16(root / "Testing" / "Depth" / rel, frame_depth(100 + 10 * n + k))
        tests[seq] = (rels, uvd)
    return train_uvd, tests


def test_icvl_train_skips_rotated_copies_by_default(tmp_path):
    train_uvd, _ = make_icvl_archive(tmp_path)
    split = ICVLSplit(tmp_path)
    originals = [0, 2, 4]
    assert len(split) == 3 and split.frame_ids.tolist() == [0, 1, 2]
    assert [split.frame_path(i) for i in range(3)] == [
        tmp_path / "Training" / "Depth" / TRAIN_RELPATHS[k] for k in originals
    ]
    np.testing.assert_array_equal(split.joints_uvd(), train_uvd[originals])
    assert split.joint_names == ICVL_JOINT_NAMES and len(split.joint_names) == 16
    assert split.intrinsics == ICVL and split.default_cube_mm == 250.0 and split.cube_mm(2) == 250.0

    depth = split.depth(1)
    assert depth.shape == (240, 320) and depth.dtype == np.float32
    np.testing.assert_array_equal(depth, frame_depth(2))

    everything = ICVLSplit(tmp_path, "train", include_rotated=True)
    assert len(everything) == 5
    np.testing.assert_array_equal(everything.joints_uvd(), train_uvd)
    np.testing.assert_array_equal(everything.depth(3), frame_depth(3))


def test_icvl_xyz_is_y_down_with_icvl_camera(tmp_path):
    train_uvd, _ = make_icvl_archive(tmp_path)
    split = ICVLSplit(tmp_path, include_rotated=True)
    xyz = split.joints_xyz()
    u, v, d = np.moveaxis(train_uvd, -1, 0)
    expected = np.stack([(u - 160.0) * d / 241.42, (v - 120.0) * d / 241.42, d], axis=-1)
    np.testing.assert_allclose(xyz, expected, rtol=0, atol=1e-9)  # y = +(v - cy) z / fy: y down
    np.testing.assert_allclose(ICVL.xyz_to_uvd(xyz), train_uvd, rtol=0, atol=1e-6)


def test_icvl_test_is_seq_1_then_seq_2(tmp_path):
    _, tests = make_icvl_archive(tmp_path)
    (rels1, uvd1), (rels2, uvd2) = tests["test_seq_1"], tests["test_seq_2"]
    both = ICVLSplit(tmp_path, "test")
    assert len(both) == 5
    depth_dir = tmp_path / "Testing" / "Depth"
    assert [both.frame_path(i) for i in range(5)] == [depth_dir / r for r in rels1 + rels2]
    np.testing.assert_array_equal(both.joints_uvd(), np.concatenate([uvd1, uvd2]))
    np.testing.assert_array_equal(both.depth(3), frame_depth(100 + 20 + 0))  # seq 2, frame 0
    seq2 = ICVLSplit(tmp_path, "test_seq_2")
    np.testing.assert_array_equal(seq2.joints_uvd(), uvd2)


def test_icvl_deep_prior_layout_and_missing_frames(tmp_path):
    rels = ["201403121135/image_0000.png", "201403121135/image_0001.png", "10/201403121135/x.png"]
    uvd = icvl_uvd(3, 7)
    write_labels(tmp_path / "train.txt", rels, uvd)
    write_png16(tmp_path / "Depth" / rels[1], frame_depth(5))  # frame 0 is missing: skipped
    split = ICVLSplit(tmp_path, "train")
    assert len(split) == 1 and split.frame_ids.tolist() == [1]
    assert split.frame_path(0) == tmp_path / "Depth" / rels[1]
    np.testing.assert_array_equal(split.joints_uvd(), uvd[[1]])
    np.testing.assert_array_equal(split.depth(0), frame_depth(5))


def test_icvl_invalid_depth_code_reads_as_zero(tmp_path):
    rels = ["201403121135/image_0000.png"]
    write_labels(tmp_path / "Training" / "labels.txt", rels, icvl_uvd(1, 0))
    depth = frame_depth(0)
    depth[5, 5:8] = [32001, 32000, 0]
    write_png16(tmp_path / "Training" / "Depth" / rels[0], depth)
    assert read_depth_png16(tmp_path / "Training" / "Depth" / rels[0])[5, 5] == 32001  # raw
    read = ICVLSplit(tmp_path).depth(0)
    assert read[5, 5:8].tolist() == [0.0, 32000.0, 0.0]
    # the same frame in a plain folder read with the ICVL camera (folder:DIR:icvl): 32001 is no
    # depth there too; another camera keeps the value
    folder = tmp_path / "frames"
    folder.mkdir()
    write_png16(folder / "f.png", depth)
    assert FolderFrames(folder, ICVL).depth(0)[5, 5:8].tolist() == [0.0, 32000.0, 0.0]
    other = Intrinsics(fx=241.42, fy=241.42, cx=160.0, cy=120.0, width=320, height=240)
    assert FolderFrames(folder, other).depth(0)[5, 5] == 32001.0
    write_png16(tmp_path / "Training" / "Depth" / rels[0], np.zeros((240, 320)))
    assert not ICVLSplit(tmp_path).depth(0).any()  # an all-zero frame is not an error


def test_real_icvl_test_labels_round_trip(tmp_path):
    labels, listing = ICVL_GT / "icvl_test_groundtruth_label.txt", ICVL_GT / "icvl_test_list.txt"
    if not (labels.is_file() and listing.is_file()):
        pytest.skip(f"real ICVL test labels not available under {ICVL_GT}")
    gt_lines = labels.read_text().splitlines()
    names = listing.read_text().splitlines()
    gt = np.array([line.split() for line in gt_lines], dtype=np.float64).reshape(-1, 16, 3)
    assert gt.shape == (1596, 16, 3) and len(names) == 1596
    # Rebuild the archive's Testing/test_seq_{1,2}.txt: "<relpath> u1 v1 d1 ... u16 v16 d16".
    for seq in ("test_seq_1", "test_seq_2"):
        text = "".join(f"{n} {g}\n" for n, g in zip(names, gt_lines) if n.startswith(seq + "/"))
        (tmp_path / "Testing").mkdir(exist_ok=True)
        (tmp_path / "Testing" / f"{seq}.txt").write_text(text)

    rels1, uvd1 = read_icvl_labels(tmp_path / "Testing" / "test_seq_1.txt")
    rels2, uvd2 = read_icvl_labels(tmp_path / "Testing" / "test_seq_2.txt")
    assert (len(rels1), len(rels2)) == (702, 894)
    assert rels1 + rels2 == names
    np.testing.assert_array_equal(np.concatenate([uvd1, uvd2]), gt)
    xyz = ICVL.uvd_to_xyz(gt)
    np.testing.assert_allclose(ICVL.xyz_to_uvd(xyz), gt, rtol=0, atol=1e-6)

    # With dummy PNGs for a few frames the "test" split picks exactly those GT rows, in order.
    rows = [0, 701, 702, 1595]
    for k in rows:
        write_png16(tmp_path / "Testing" / "Depth" / names[k], np.zeros((240, 320)))
    split = ICVLSplit(tmp_path, "test")
    assert split.frame_ids.tolist() == rows
    np.testing.assert_array_equal(split.joints_uvd(), gt[rows])
    np.testing.assert_allclose(split.joints_xyz(), xyz[rows], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ICVL.xyz_to_uvd(split.joints_xyz()), gt[rows], rtol=0, atol=1e-6)


def test_icvl_errors(tmp_path):
    with pytest.raises(HandganError, match="unknown ICVL split"):
        ICVLSplit(tmp_path, "validation")
    assert_error(lambda: ICVLSplit(tmp_path, "test"), "test_seq_1.txt", "labels not found",
                 "Testing/test_seq_1.txt")

    labels = tmp_path / "Training" / "labels.txt"
    write_labels(labels, ["45/201403121135/image_0000.png"], icvl_uvd(1, 0))
    assert_error(lambda: ICVLSplit(tmp_path), labels, "all 1 label lines are rotated copies")

    rels = ["201403121135/image_0000.png"]
    write_labels(labels, rels, icvl_uvd(1, 0))
    assert_error(lambda: ICVLSplit(tmp_path), "labels.txt", "none of the 1 depth PNGs")

    good = label_line(rels[0], icvl_uvd(1, 0)[0])
    labels.write_text(good + "\n" + good.rsplit(" ", 1)[0] + "\n")  # blank line 2 is fine
    assert_error(lambda: ICVLSplit(tmp_path), labels, "labels.txt:3", "48 numbers", "48 fields")
    labels.write_text(good + good.replace(" ", " x1.5 ", 1).rsplit(" ", 1)[0] + "\n")
    assert_error(lambda: ICVLSplit(tmp_path), labels, "labels.txt:2", "'x1.5' is not a number")
    labels.write_text(good.replace(" ", " nan ", 1).rsplit(" ", 1)[0] + "\n")
    assert_error(lambda: ICVLSplit(tmp_path), labels, "labels.txt:1", "NaN")

    png = tmp_path / "Training" / "Depth" / rels[0]
    labels.write_text(good)
    png.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((240, 320), np.uint8)).save(png)
    assert_error(lambda: ICVLSplit(tmp_path).depth(0), png, "16-bit greyscale", "8-bit grey")
    Image.fromarray(np.zeros((240, 320, 3), np.uint8)).save(png)
    assert_error(lambda: ICVLSplit(tmp_path).depth(0), png, "8-bit RGB")
    write_png16(png, np.zeros((120, 160)))
    assert_error(lambda: ICVLSplit(tmp_path).depth(0), png, "160x120, expected 320x240")
    png.write_bytes(b"not a png at all, just some text bytes")
    assert_error(lambda: ICVLSplit(tmp_path).depth(0), png, "not a PNG")
    write_png16(png, frame_depth(0))
    png.write_bytes(png.read_bytes()[:200])
    assert_error(lambda: ICVLSplit(tmp_path).depth(0), png, "truncated or corrupt")


# --- MSRA --------------------------------------------------------------------------------------


def write_bin(path, depth, box, header=None, payload=None):
    """The MSRA .bin: '<6i' width height left top right bottom, then the box as float32."""
    left, top, right, bottom = box
    h, w = depth.shape
    if header is None:
        header = (w, h, left, top, right, bottom)
    if payload is None:
        payload = np.ascontiguousarray(depth[top:bottom, left:right], dtype="<f4").tobytes()
    path.write_bytes(struct.pack("<6i", *header) + payload)


def msra_xyz(n, seed):
    """Joints as joint.txt stores them: mm, z negative, printed with 4 decimals."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform((-80, -80, -450), (80, 80, -250), (n, 21, 3))
    return np.round(xyz, 4)


def msra_depth(seed):
    depth = np.zeros((240, 320), np.float32)
    box = (90 + seed % 7, 50, 200, 170 - seed % 5)  # left, top, right, bottom
    rng = np.random.default_rng(seed)
    depth[box[1]:box[3], box[0]:box[2]] = rng.uniform(200, 500, (box[3] - box[1], box[2] - box[0]))
    depth[box[1]:box[1] + 3, box[0]:box[0] + 3] = 0.0  # holes inside the box stay 0
    return depth, box


def make_gesture(folder, n, seed, empty_frames=False):
    """A gesture folder with joint.txt and n .bin frames; returns (file xyz, depths)."""
    folder.mkdir(parents=True)
    xyz = msra_xyz(n, seed)
    lines = [f"{n}\n"] + [" ".join(f"{v:.4f}" for v in row.ravel()) + "\n" for row in xyz]
    (folder / "joint.txt").write_text("".join(lines))
    depths = []
    for k in range(n):
        if empty_frames:  # box of size 0: a valid 24-byte frame, cheap for long gestures
            depth, box = np.zeros((240, 320), np.float32), (0, 0, 0, 0)
        else:
            depth, box = msra_depth(seed * 100 + k)
        write_bin(folder / f"{k:06d}_depth.bin", depth, box)
        depths.append(depth)
    return xyz, depths


def test_msra_reads_frames_joints_and_negates_z(tmp_path):
    made = {}
    for gesture, n in (("IP", 2), ("1", 3), ("I", 1), ("9", 2)):  # sorted: 1, 9, I, IP
        made[gesture] = make_gesture(tmp_path / "P3" / gesture, n, seed=n + len(gesture))
    data = MSRADataset(tmp_path)
    order = ["1", "9", "I", "IP"]
    assert data.subjects == (3,) and len(data) == 8
    gestures = [data.frame_path(i).parent.name for i in range(len(data))]
    assert gestures == [g for g in order for _ in range(len(made[g][1]))]
    assert data.frame_numbers.tolist() == [0, 1, 2, 0, 1, 0, 0, 1]
    assert data.frame_path(4) == tmp_path / "P3" / "9" / "000001_depth.bin"
    assert data.joint_names == MSRA_JOINT_NAMES and data.joint_names[5] == "middle_mcp"
    assert data.joint_names[17:] == ("thumb_mcp", "thumb_pip", "thumb_dip", "thumb_tip")
    assert data.intrinsics == MSRA and data.default_cube_mm == 180.0 and data.cube_mm(7) == 180.0

    file_xyz = np.concatenate([made[g][0] for g in order])
    xyz = data.joints_xyz()
    np.testing.assert_array_equal(xyz[..., :2], file_xyz[..., :2])
    np.testing.assert_array_equal(xyz[..., 2], -file_xyz[..., 2])  # stored negative, read positive
    assert (xyz[..., 2] > 0).all()

    uvd = data.joints_uvd()
    x, y, z = np.moveaxis(xyz, -1, 0)
    expected = np.stack([160.0 + 241.42 * x / z, 120.0 - 241.42 * y / z, z], axis=-1)  # y up
    np.testing.assert_allclose(uvd, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(MSRA.uvd_to_xyz(uvd), xyz, rtol=0, atol=1e-6)

    depths = [d for g in order for d in made[g][1]]
    for i in range(len(data)):
        got = data.depth(i)
        assert got.shape == (240, 320) and got.dtype == np.float32
        np.testing.assert_array_equal(got, depths[i])


def test_msra_bin_decodes_independently(tmp_path):
    depth, box = msra_depth(3)
    write_bin(tmp_path / "000000_depth.bin", depth, box)
    raw = (tmp_path / "000000_depth.bin").read_bytes()
    assert struct.unpack("<6i", raw[:24]) == (320, 240) + box
    left, top, right, bottom = box
    assert len(raw) == 24 + 4 * (right - left) * (bottom - top)
    np.testing.assert_array_equal(read_depth_bin(tmp_path / "000000_depth.bin"), depth)


def test_msra_leave_one_subject_out(tmp_path):
    sizes = {0: 3, 3: 2, 8: 4}
    for s, n in sizes.items():
        make_gesture(tmp_path / f"P{s}" / "5", n, seed=s)
        make_gesture(tmp_path / f"P{s}" / "T", 1, seed=s + 20)
    train, test = msra_fold(tmp_path, 3)
    assert test.subjects == (3,) and len(test) == sizes[3] + 1
    assert {test.cube_mm(i) for i in range(len(test))} == {180.0} and test.default_cube_mm == 180.0
    assert train.subjects == (0, 8) and len(train) == sizes[0] + 1 + sizes[8] + 1
    assert train.subject_ids.tolist() == [0] * 4 + [8] * 5
    assert [train.cube_mm(i) for i in range(len(train))] == [200.0] * 4 + [150.0] * 5
    assert train.default_cube_mm == 200.0

    train8, test8 = msra_fold(tmp_path, 8)
    assert (len(train8), len(test8)) == (7, 5) and test8.cube_mm(0) == 150.0
    assert len(MSRADataset(tmp_path, [8, 0])) == 9  # subjects are read in number order
    assert MSRADataset(tmp_path, [8, 0]).subjects == (0, 8)


def test_msra_skip_faulty(tmp_path):
    make_gesture(tmp_path / "P8" / "4", 170, seed=1, empty_frames=True)
    make_gesture(tmp_path / "P8" / "5", 2, seed=2, empty_frames=True)
    assert MSRA_FAULTY_FRAMES[(8, "4")] == (168,)
    everything = MSRADataset(tmp_path)
    clean = MSRADataset(tmp_path, skip_faulty=True)
    assert (len(everything), len(clean)) == (172, 171)
    assert 168 not in clean.frame_numbers[:169].tolist()
    assert clean.frame_numbers[167:170].tolist() == [167, 169, 0]
    np.testing.assert_array_equal(clean.joints_xyz()[168], everything.joints_xyz()[169])
    assert not clean.depth(168).any()  # all-zero frames read fine


def test_msra_errors(tmp_path):
    assert_error(lambda: MSRADataset(tmp_path / "nope"), "nope", "not found")
    make_gesture(tmp_path / "P1" / "1", 2, seed=0)
    with pytest.raises(HandganError, match="unknown MSRA subject 9"):
        MSRADataset(tmp_path, [9])
    assert_error(lambda: MSRADataset(tmp_path, [2]), "P2", "subject folder not found")
    assert_error(lambda: MSRADataset(tmp_path, []), tmp_path, "no MSRA subjects selected")
    assert_error(lambda: msra_fold(tmp_path, 1), tmp_path, "nothing to train on")

    folder = tmp_path / "P1" / "1"
    joint = folder / "joint.txt"
    good = joint.read_text()
    lines = good.splitlines(keepends=True)

    joint.write_text(lines[0] + lines[1] + lines[2].rsplit(" ", 1)[0] + "\n")
    assert_error(lambda: MSRADataset(tmp_path), joint, "joint.txt:3", "63 numbers", "got 62")
    bad_token = lines[2].replace(" ", " abc ", 1).rsplit(" ", 1)[0]
    joint.write_text(lines[0] + lines[1] + bad_token + "\n")
    assert_error(lambda: MSRADataset(tmp_path), joint, "joint.txt:3", "'abc' is not a number")
    joint.write_text("two\n" + "".join(lines[1:]))
    assert_error(lambda: MSRADataset(tmp_path), joint, "joint.txt:1", "frame count")
    joint.write_text("3\n" + "".join(lines[1:]))
    assert_error(lambda: MSRADataset(tmp_path), joint, "says 3 frames but 2 label lines")
    joint.write_text("3\n" + "".join(lines[1:]) + lines[1])  # 3 labels but only 2 .bin files
    assert_error(lambda: MSRADataset(tmp_path), joint, "says 3 frames", "2 *_depth.bin",
                 "000002_depth.bin")
    joint.write_text(good + "\n")  # a trailing blank line is fine
    (folder / "000001_depth.bin").unlink()
    assert_error(lambda: MSRADataset(tmp_path), joint, "says 2 frames", "000001_depth.bin")
    (folder / "joint.txt").unlink()
    assert_error(lambda: MSRADataset(tmp_path), joint, "joint.txt not found")

    depth, box = msra_depth(0)
    bin_path = tmp_path / "000000_depth.bin"
    full = struct.pack("<6i", 320, 240, *box)
    write_bin(bin_path, depth, box, payload=b"\0" * 40)
    assert_error(lambda: read_depth_bin(bin_path), bin_path, "truncated .bin", "the file has 40")
    bin_path.write_bytes(full[:10])
    assert_error(lambda: read_depth_bin(bin_path), bin_path, "truncated .bin", "10 bytes")
    write_bin(bin_path, depth, box, header=(320, 240, 10, 10, 400, 20), payload=b"")
    assert_error(lambda: read_depth_bin(bin_path), bin_path, "outside the 320x240 image")
    write_bin(bin_path, depth, box, header=(320, 240, -5, 10, 20, 20), payload=b"")
    assert_error(lambda: read_depth_bin(bin_path), bin_path, "negative", "left=-5")
    write_bin(bin_path, depth, (0, 0, 1, 1), payload=np.float32([np.nan]).tobytes())
    assert_error(lambda: read_depth_bin(bin_path), bin_path, "NaN")


def test_msra_frame_of_wrong_size_is_rejected(tmp_path):
    make_gesture(tmp_path / "P0" / "1", 1, seed=0)
    path = tmp_path / "P0" / "1" / "000000_depth.bin"
    write_bin(path, np.zeros((480, 640), np.float32), (0, 0, 2, 2))
    assert_error(lambda: MSRADataset(tmp_path).depth(0), path, "640x480, expected 320x240")


def test_msra_joint_txt_alone(tmp_path):
    xyz, _ = make_gesture(tmp_path / "g", 2, seed=4)
    np.testing.assert_array_equal(read_joint_txt(tmp_path / "g" / "joint.txt"), xyz)


# --- plain folders -----------------------------------------------------------------------------


def test_folder_reads_png_and_npy_in_name_order(tmp_path):
    cam = Intrinsics(fx=300.0, fy=300.0, cx=80.0, cy=60.0, width=160, height=120)
    frames = {
        "a.png": frame_depth(1, 120, 160),
        "b.npy": np.minimum(frame_depth(2, 120, 160), 32767).astype(np.int16),
        "c.npy": frame_depth(3, 120, 160).astype(np.float64) + 0.25,
        "d.npy": frame_depth(4, 120, 160).astype(np.uint16),
    }
    for name, depth in frames.items():
        if name.endswith(".png"):
            write_png16(tmp_path / name, depth)
        else:
            np.save(tmp_path / name, depth)
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "sub" / "e.npy", frames["b.npy"])  # not recursive

    data = FolderFrames(tmp_path, cam)
    assert len(data) == 4 and [data.frame_path(i).name for i in range(4)] == sorted(frames)
    for i, depth in enumerate(frames.values()):
        got = data.depth(i)
        assert got.dtype == np.float32 and got.shape == (120, 160)
        np.testing.assert_array_equal(got, depth.astype(np.float32))
    assert data.joints_uvd() is None and data.joints_xyz() is None
    assert data.default_cube_mm == 300.0 and data.cube_mm(3) == 300.0 and data.intrinsics == cam

    only_npy = FolderFrames(tmp_path, cam, cube_mm=220, pattern="*.npy")
    assert len(only_npy) == 3 and only_npy.cube_mm(0) == 220.0


def test_parse_intrinsics():
    assert parse_intrinsics("nyu") == NYU and parse_intrinsics(" ICVL ") == ICVL
    assert parse_intrinsics("msra") == MSRA
    cam = parse_intrinsics("475.1, 475.2, 315.5,245.5")
    assert (cam.fx, cam.fy, cam.cx, cam.cy) == (475.1, 475.2, 315.5, 245.5)
    assert (cam.width, cam.height) == (640, 480)
    assert cam.y_up
    cam = parse_intrinsics("200,201,80,60,160,120")
    assert (cam.width, cam.height) == (160, 120)
    for bad, fragment in (("kinect", "expected nyu"), ("1,2,3", "expected nyu"),
                          ("a,2,3,4", "must be numbers"), ("0,2,3,4", "> 0"),
                          ("1,2,3,4,640.5,480", "whole pixels"), ("1,2,3,4,0,480", "> 0"),
                          ("1,nan,3,4", "finite")):
        with pytest.raises(HandganError, match=fragment):
            parse_intrinsics(bad)


def test_folder_errors(tmp_path):
    assert_error(lambda: FolderFrames(tmp_path / "nope", ICVL), "nope", "not found")
    (tmp_path / "readme.txt").write_text("no frames here")
    assert_error(lambda: FolderFrames(tmp_path, ICVL), tmp_path, "no depth frames")
    assert_error(lambda: FolderFrames(tmp_path, ICVL, pattern="*.txt"), "readme.txt", "unsupported")
    with pytest.raises(HandganError, match="cube"):
        FolderFrames(tmp_path, ICVL, cube_mm=0)

    def check(name, write, *fragments):
        path = tmp_path / name
        write(path)
        assert_error(lambda: FolderFrames(tmp_path, ICVL, pattern=name), path, *fragments)

    check("garbage.npy", lambda p: p.write_bytes(b"\x93NUMPY garbage"), "not a readable .npy")
    check("cube.npy", lambda p: np.save(p, np.zeros((2, 240, 320))), "2-D", "(2, 240, 320)")
    check("flags.npy", lambda p: np.save(p, np.zeros((240, 320), bool)), "dtype bool")
    nan = np.zeros((240, 320))
    nan[3, 4] = np.nan
    check("nan.npy", lambda p: np.save(p, nan), "NaN")
    check("neg.npy", lambda p: np.save(p, -np.ones((240, 320), np.int32)), "negative")
    check("small.npy", lambda p: np.save(p, np.zeros((120, 160))), "160x120", "320x240")
    check("grey8.png", lambda p: Image.fromarray(np.zeros((240, 320), np.uint8)).save(p),
          "16-bit greyscale", "8-bit grey")
    rgb = np.zeros((240, 320, 3), np.uint8)
    check("rgb.png", lambda p: Image.fromarray(rgb).save(p), "8-bit RGB")
    check("text.png", lambda p: p.write_text("hello"), "not a PNG")
    np.save(tmp_path / "zero.npy", np.zeros((240, 320), np.uint16))
    assert not FolderFrames(tmp_path, ICVL, pattern="zero.npy").depth(0).any()


def _data_info(spec):
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "handgan", "data", "info", "--data", spec, "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["splits"]


def test_data_info_on_icvl_and_msra(tmp_path):
    make_icvl_archive(tmp_path / "icvl")
    info = _data_info(f"icvl:{tmp_path / 'icvl'}")
    assert info["train"]["frames"] == 3 and info["test"]["frames"] == 5  # rotated copies left out
    assert info["train"]["joints"] == 16 and info["train"]["intrinsics"]["y_up"] is False
    assert info["train"]["cube_mm"] == 250

    for subject, n in ((0, 2), (3, 3)):
        make_gesture(tmp_path / "msra" / f"P{subject}" / "1", n, seed=subject + 1)
    info = _data_info(f"msra:{tmp_path / 'msra'}:3")
    assert info["train"]["frames"] == 2 and info["test"]["frames"] == 3
    assert info["test"]["joints"] == 21 and info["test"]["cube_mm"] == 180  # subject P3's cube
    lo, hi = info["test"]["depth_range_mm"]
    assert 200 <= lo < hi <= 500


def test_icvl_splits_are_the_label_files_present(tmp_path):
    from handgan.data.icvl import available_splits
    from handgan.data.sources import parse_source, split_names

    official, deep_prior, train_only = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    frame = ["201403121135/image_0000.png"]
    write_labels(official / "Training" / "labels.txt", frame, icvl_uvd(1, 0))
    for q in (1, 2):
        write_labels(official / "Testing" / f"test_seq_{q}.txt", frame, icvl_uvd(1, q))
    write_labels(deep_prior / "train.txt", ["201403121135/image_0000.png"], icvl_uvd(1, 0))
    write_labels(deep_prior / "test_seq_1.txt", ["x/image_0000.png"], icvl_uvd(1, 1))  # no seq 2
    write_labels(train_only / "Training" / "labels.txt", frame, icvl_uvd(1, 0))
    assert available_splits(official) == ["train", "test"]
    assert available_splits(deep_prior) == ["train", "test_seq_1"]
    assert split_names(parse_source(f"icvl:{train_only}")) == ["train"]
    assert_error(lambda: available_splits(tmp_path / "nope"), "nope", "not found")
