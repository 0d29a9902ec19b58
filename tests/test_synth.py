"""Synthetic frames and the NYU-format dataset writer: labels vs pixels, determinism, exact files,
resume after interruption, and the `handgan synth` / `show-samples` commands."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from handgan.camera import NYU
from handgan.data.nyu import NYUSplit, encode_nyu_depth, encode_png_rgb
from handgan.errors import HandganError
from handgan.synth import generate, render, scene
from handgan.synth import hand as H
from handgan.synth.frame import SynthConfig, frame_rng, subject_shapes, synthesize_frame
from handgan.synth.render import SensorConfig

from helpers import HAND

CLEAN = SynthConfig(scene="hand", sensor=SensorConfig(enabled=False))
FULL_CLEAN = SynthConfig(scene="full", sensor=SensorConfig(enabled=False))


def _frame(i, cfg=CLEAN, seed=0, split="train"):
    people = subject_shapes(seed, split, cfg.train_subjects)
    rng = frame_rng(seed, split, i)
    return synthesize_frame(rng, people[int(rng.integers(len(people)))], cfg)


def test_visible_joints_project_onto_hand_pixels_within_a_finger_radius():
    checked, hidden = 0, 0
    for i in range(40):
        f = _frame(i)
        u = np.rint(f.joints_uvd[:, 0]).astype(int)
        v = np.rint(f.joints_uvd[:, 1]).astype(int)
        d = f.depth_mm[v, u].astype(float)  # clean render rounded to whole mm
        z = f.joints_uvd[:, 2]
        vis = f.visible
        assert np.all(d[vis] > 0)
        # The pixel's surface lies in front of the joint by at most the part's radius (+ rounding).
        assert np.all(d[vis] <= z[vis] + 0.5 + 1e-6)
        assert np.all(d[vis] >= z[vis] - f.joint_radii[vis] - 3.5)
        checked += vis.sum()
        hidden += (~vis).sum()
    assert checked > 0.4 * 40 * 36  # most joints are visible...
    assert hidden > 0  # ...but self-occlusion happens


def test_frames_keep_the_whole_hand_in_view_at_the_required_distances():
    for i in range(40):
        f = _frame(i, cfg=HAND if i % 2 else SynthConfig())  # hand-only and full frames
        uvd = f.joints_uvd
        assert np.all((uvd[:, 0] >= 0) & (uvd[:, 0] < 640) & (uvd[:, 1] >= 0) & (uvd[:, 1] < 480))
        assert 500.0 <= uvd[32, 2] <= 1200.0  # palm centre depth
        assert f.depth_mm.dtype == np.uint16 and f.depth_mm.shape == (480, 640)
        # labels agree with the camera model: uvd is the NYU projection of xyz
        np.testing.assert_allclose(NYU.uvd_to_xyz(uvd), f.joints_xyz, atol=1e-9)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != generate.MANIFEST}


@pytest.mark.parametrize("cfg", [SynthConfig(), HAND], ids=["full", "hand"])
def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path, cfg):
    a = generate.synthesize_dataset(tmp_path / "a", 10, 4, seed=3, workers=1, config=cfg, progress=False)
    b = generate.synthesize_dataset(tmp_path / "b", 10, 4, seed=3, workers=2, config=cfg, progress=False)
    c = generate.synthesize_dataset(tmp_path / "c", 10, 4, seed=4, workers=1, config=cfg, progress=False)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa.keys() == fb.keys() and len(fa) == 14 + 2 * 2
    assert all(fa[k] == fb[k] for k in fa)
    assert fa["train/depth_1_0000001.png"] != fc["train/depth_1_0000001.png"]


def test_files_decode_back_to_the_rendered_depth_and_labels(tmp_path):
    cfg = SynthConfig()
    root = generate.synthesize_dataset(tmp_path / "ds", 6, 3, seed=11, workers=1, progress=False)
    for split, n in (("train", 6), ("test", 3)):
        mat = scipy.io.loadmat(root / split / "joint_data.mat")  # decoded without our reader
        assert mat["joint_xyz"].shape == (1, n, 36, 3) and mat["joint_xyz"].dtype == np.float64
        assert mat["joint_uvd"].shape == (1, n, 36, 3)
        assert [str(x[0]) for x in mat["joint_names"].ravel()][:2] == ["F1_KNU3_A", "F1_KNU3_B"]
        people = subject_shapes(11, split, cfg.train_subjects if split == "train" else cfg.test_subjects)
        for k in range(n):
            rng = frame_rng(11, split, k)
            f = synthesize_frame(rng, people[int(rng.integers(len(people)))], cfg)
            with Image.open(root / split / f"depth_1_{k + 1:07d}.png") as im:
                assert im.mode == "RGB"
                rgb = np.asarray(im)
            assert np.all(rgb[..., 0] == 0)
            decoded = rgb[..., 1].astype(np.int64) * 256 + rgb[..., 2]
            np.testing.assert_array_equal(decoded, f.depth_mm)
            png = (root / split / f"depth_1_{k + 1:07d}.png").read_bytes()
            assert png == encode_png_rgb(encode_nyu_depth(f.depth_mm), deflate="isal")
            np.testing.assert_array_equal(mat["joint_xyz"][0, k], f.joints_xyz)
            np.testing.assert_array_equal(mat["joint_uvd"][0, k], f.joints_uvd)
    extra = np.load(root / "train" / "handgan_extra.npz")
    assert extra["visible"].shape == (6, 36) and extra["angles"].shape == (6, 22)
    # our synthetic dataset reads through the NYU reader unchanged
    split = NYUSplit(root, "test")
    assert len(split) == 3 and split.joints_xyz().shape == (3, 14, 3)


def test_hand_frames_keep_their_zlib_pngs(tmp_path):
    """Only full frames moved to ISA-L: hand frames' files stay byte for byte as before."""
    root = generate.synthesize_dataset(tmp_path / "h", 2, 0, seed=5, config=HAND, progress=False)
    people = subject_shapes(5, "train", HAND.train_subjects)
    for k in range(2):
        rng = frame_rng(5, "train", k)
        f = synthesize_frame(rng, people[int(rng.integers(len(people)))], HAND)
        png = (root / "train" / f"depth_1_{k + 1:07d}.png").read_bytes()
        assert png == encode_png_rgb(encode_nyu_depth(f.depth_mm), deflate="zlib")


def test_interrupted_run_never_looks_complete_and_resumes_to_identical_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(generate, "CHUNK", 4)
    reference = generate.synthesize_dataset(tmp_path / "ref", 12, 4, seed=5, progress=False)

    real_render, calls = generate._render_chunk, []

    def dying_render(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the third chunk
        calls.append(args)
        return real_render(*args)

    monkeypatch.setattr(generate, "_render_chunk", dying_render)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        generate.synthesize_dataset(out, 12, 4, seed=5, progress=False)
    assert not (out / generate.MANIFEST).exists() and not (out / "train" / "joint_data.mat").exists()
    with pytest.raises(HandganError, match="joint_data.mat"):
        NYUSplit(out, "train")

    monkeypatch.setattr(generate, "_render_chunk", real_render)
    generate.synthesize_dataset(out, 12, 4, seed=5, progress=False)
    assert _files(out) == _files(reference)
    assert not (out / generate.PARTIAL).exists()


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "handgan", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("args, message", [
    (["--train", "-5"], "must be >= 0"),
    (["--test", "x"], "whole number"),
    (["--workers", "0"], "must be >= 1"),
])
def test_synth_rejects_bad_counts_on_one_line(tmp_path, args, message):
    r = _cli("synth", "--out", str(tmp_path / "o"), *args)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_synth_refuses_non_empty_and_unwritable_outputs(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    r = _cli("synth", "--out", str(busy), "--train", "2", "--test", "0", "--quiet")
    assert r.returncode == 2 and "not empty" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (busy / "notes.txt").read_text() == "mine"  # nothing of the user's is lost

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    r = _cli("synth", "--out", str(blocker / "sub"), "--train", "2", "--test", "0", "--quiet")
    assert r.returncode == 2 and "a-file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_synth_and_show_samples_commands_end_to_end(tmp_path):
    out = tmp_path / "ds"
    r = _cli("synth", "--out", str(out), "--train", "8", "--test", "2", "--workers", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    r = _cli("show-samples", str(out), "--count", "4", "--cols", "2", "--out", str(tmp_path / "grid.png"))
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "grid.png") as im:
        assert im.size == (540, 540)  # 2 x 2 panels of 3 inches at 90 dpi
    r = _cli("synth", "--out", str(out), "--train", "8", "--test", "2", "--overwrite", "--quiet",
             "--scene", "hand", "--background", "none")
    assert r.returncode == 0, r.stderr
    r = _cli("show-samples", str(tmp_path / "missing"), "--out", str(tmp_path / "g.png"))
    assert r.returncode == 2 and "missing" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["synth", "show-samples"])
def test_every_command_has_help(command):
    r = _cli(command, "--help")
    assert r.returncode == 0 and "usage: handgan " + command in r.stdout


@pytest.mark.parametrize("background", ["wall", "table", "clutter"])
def test_backgrounds_never_hide_the_hand(background):
    """The same hand (same seed) is exactly as visible in front of any background as in front of
    nothing: walls, tables and clutter always lie behind/below it."""
    clean = SensorConfig(enabled=False)
    for i in range(60):
        alone = _frame(i, cfg=SynthConfig(scene="hand", background="none", sensor=clean))
        f = _frame(i, cfg=SynthConfig(scene="hand", background=background, sensor=clean))
        assert f.background == background
        np.testing.assert_array_equal(f.joints_xyz, alone.joints_xyz)
        np.testing.assert_array_equal(f.visible, alone.visible)
        hand = alone.depth_mm > 0
        assert np.count_nonzero(f.depth_mm[hand] < alone.depth_mm[hand]) == 0


# ----------------------------------------------------------------------------------------------
# Full-frame scenes


def _full(i, cfg=FULL_CLEAN, seed=0):
    return _frame(i, cfg=cfg, seed=seed)


def test_full_frames_fill_the_frame_with_a_person_and_a_room():
    shares, tags = [], set()
    for i in range(12):
        f = _full(i, cfg=SynthConfig())  # with the sensor: nothing beyond its 4 m range
        assert f.depth_mm.dtype == np.uint16 and f.depth_mm.shape == (480, 640)
        shares.append(np.count_nonzero(f.depth_mm) / f.depth_mm.size)
        tags.update(f.background.split("+"))
        d = f.depth_mm[f.depth_mm > 0]
        assert d.max() <= 4000 and d.min() >= 300
    assert np.median(shares) > 0.6  # most of the frame has depth (far walls beyond 4 m read 0)
    assert {"room", "table"} <= tags and any(t.startswith("other_") for t in tags)


def test_the_person_stands_behind_the_hand_and_the_arm_reaches_it():
    shape = subject_shapes(0, "train", 4)[0]
    checked = 0
    for i in range(30):
        rng = frame_rng(0, "train", i)
        angles, rotation = H.sample_articulation(rng), H.sample_rotation(rng)
        z = rng.uniform(500.0, 1200.0)
        pose = H.pose_from_angles(angles, rotation, NYU.uvd_to_xyz(np.array([320.0, 240.0, z])))
        sk = H.forward_kinematics(pose, shape)
        g = H.hand_geometry(sk)
        around = scene.sample_surroundings(rng, sk, g, NYU)
        if around is None:  # the forearm points at the camera: the frame redraws the hand
            continue
        checked += 1
        # the upper arm starts where the hand's forearm ends, and is an upper arm's length
        forearm_end = g.b[g.labels == H.LABEL_FOREARM].mean(0)
        assert np.linalg.norm(around.elbow - forearm_end) < 1.0
        # 290 mm x the body scale (hand scale 0.82-1.12, x 0.95-1.05)
        assert 220.0 < np.linalg.norm(around.shoulder - around.elbow) < 345.0
        # the torso's front is behind the palm and behind every point of the hand
        hand = g.labels == H.LABEL_HAND
        back = max((g.a[hand, 2] + g.ra[hand]).max(), (g.b[hand, 2] + g.rb[hand]).max())
        assert around.torso_front_mm >= max(sk.palm_centre[2] + 120.0, back + 39.0)
        assert around.torso_front_mm <= sk.palm_centre[2] + 800.0
        # rendered, every hand pixel is nearer than whatever the surroundings put there
        alone, alone_labels = render.render_depth(_hand_scene(g), NYU)
        rest, _ = render.render_depth(render.Scene.concat(around.coarse, around.fine), NYU)
        on_hand = alone_labels == H.LABEL_HAND
        hidden = on_hand & (rest > 0) & (rest < alone - 0.5)
        assert np.count_nonzero(hidden) <= 0.01 * np.count_nonzero(on_hand)
    assert checked >= 20


def _hand_scene(g):
    return render.Scene(cone_a=g.a, cone_b=g.b, cone_ra=g.ra, cone_rb=g.rb, cone_labels=g.labels)


def test_full_frames_keep_the_hand_exact_and_its_joints_visible():
    """The hand's own pixels are the exact full-resolution render (as in hand-only frames) and
    the visible joints sit on them."""
    seen = {"full": 0, "hand": 0}
    for i in range(10):
        f = _full(i)
        hand_only = _frame(i, cfg=CLEAN)  # a different hand (other draws), same checks
        for kind, fr in (("full", f), ("hand", hand_only)):
            u = np.rint(fr.joints_uvd[:, 0]).astype(int)
            v = np.rint(fr.joints_uvd[:, 1]).astype(int)
            d = fr.depth_mm[v, u].astype(float)
            vis = fr.visible
            seen[kind] += vis.sum()
            assert np.all(d[vis] <= fr.joints_uvd[vis, 2] + 0.5 + 1e-6)
            assert np.all(d[vis] >= fr.joints_uvd[vis, 2] - fr.joint_radii[vis] - 3.5)
    assert seen["full"] > 0.4 * 10 * 36 and seen["hand"] > 0.4 * 10 * 36


def test_hand_is_usually_the_nearest_object_but_not_always_by_much():
    margins = []
    for i in range(24):
        f = _full(i)
        palm = f.joints_uvd[32, 2]
        d = f.depth_mm[f.depth_mm > 0].astype(float)
        margins.append(palm - np.percentile(d, 0.05))
    margins = np.array(margins)
    # the nearest surfaces are the hand itself (within its own depth) in most frames
    assert np.mean(margins < 150.0) > 0.7


def test_manifest_records_the_scene(tmp_path):
    root = generate.synthesize_dataset(tmp_path / "ds", 2, 0, seed=1, config=HAND, progress=False)
    manifest = generate.read_manifest(root)
    assert manifest["config"]["scene"] == "hand"
    assert SynthConfig().scene == "full"  # new datasets (and `synthetic`'s default) are full
    with pytest.raises(ValueError, match="scene"):
        SynthConfig(scene="room")


def test_synth_scene_option_on_the_command_line(tmp_path):
    r = _cli("synth", "--out", str(tmp_path / "h"), "--train", "2", "--test", "0", "--quiet",
             "--scene", "hand", "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert generate.read_manifest(tmp_path / "h")["config"]["scene"] == "hand"
    r = _cli("synth", "--out", str(tmp_path / "x"), "--scene", "room")
    assert r.returncode == 2 and "--scene" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_dense_and_sparse_incidence_give_the_same_bytes(monkeypatch):
    """The sensor's whole-frame path (dense incidence angles) equals the per-pixel one exactly."""
    clean = _full(3).depth_mm.astype(np.float32)
    outs = []
    for share in (8, 10**9):
        monkeypatch.setattr(render, "_DENSE_SHARE", share)
        outs.append(render.apply_sensor(clean, NYU, np.random.default_rng(0), SensorConfig()))
    np.testing.assert_array_equal(outs[0], outs[1])


# Recorded with main at 398879e (before the full frames' half-resolution sensor): hand-only frames
# must not change. Like any byte-level check of float arithmetic, it holds for a given numpy build
# and CPU family (the recording: numpy of .venv on x86_64).
HAND_FRAMES_SHA256 = "48390019734d28d45cfb3c7d3a4951e76e6e8d04725afea63cba9d0ed373fbf9"


def test_hand_frames_are_byte_identical_to_before():
    import hashlib

    people = subject_shapes(3, "train", HAND.train_subjects)
    digest = hashlib.sha256()
    for i in range(6):
        rng = frame_rng(3, "train", i)
        f = synthesize_frame(rng, people[int(rng.integers(len(people)))], HAND)
        digest.update(f.depth_mm.tobytes())
        digest.update(f.visible.tobytes())
    assert digest.hexdigest() == HAND_FRAMES_SHA256


def _layers_of(i):
    """A full frame's clean layers (frame._Layers) and its hand box, as _full_frame makes them."""
    from handgan.synth import frame as F

    got = {}

    def spy(layers, intr, rng, cfg, box):
        got["layers"], got["box"] = layers, box
        return np.zeros((intr.height, intr.width), np.uint16)

    orig = F._full_sensor
    F._full_sensor = spy
    try:
        _full(i, cfg=SynthConfig())
    finally:
        F._full_sensor = orig
    return got["layers"], got["box"]


def test_full_frame_layers_compose_the_clean_render():
    """The half-resolution sensor's input is the clean frame's top-left pixel of each 2x2 block,
    the full-resolution one's is the clean frame itself, and visibility reads the same pixels."""
    for i in range(4):
        layers, box = _layers_of(i)
        clean = _full(i).depth_mm  # no sensor: the clean frame in integer mm
        whole, labels = layers.full((0, 0, 640, 480))
        np.testing.assert_array_equal(np.floor(whole + 0.5).astype(np.uint16), clean)
        np.testing.assert_array_equal(layers.half(), whole[::2, ::2])
        u0, v0, u1, v1 = box
        for b in ((u0, v0, u1, v1), (u0 - 3, v0 - 1, u1 + 5, v1 + 2)):
            b = (max(b[0], 0), max(b[1], 0), min(b[2], 640), min(b[3], 480))
            d, lab = layers.full(b)
            np.testing.assert_array_equal(d, whole[b[1]:b[3], b[0]:b[2]])
            np.testing.assert_array_equal(lab, labels[b[1]:b[3], b[0]:b[2]])
        v, u = np.mgrid[0:480:7, 0:640:5]
        d, lab = layers.at(v.ravel(), u.ravel())
        np.testing.assert_array_equal(d, whole[v, u].ravel())
        np.testing.assert_array_equal(lab, labels[v, u].ravel())


def test_full_frames_sense_the_hand_box_at_full_resolution_and_the_rest_in_2x2_blocks():
    from handgan.synth import frame as F

    blocky_inside = []
    for i in range(6):
        _, box = _layers_of(i)
        f = _full(i, cfg=SynthConfig())
        d = f.depth_mm.astype(np.int32)
        same = (d[0::2, 0::2] == d[1::2, 0::2]) & (d[0::2, 0::2] == d[0::2, 1::2]) & (
            d[0::2, 0::2] == d[1::2, 1::2])
        outside = np.ones(same.shape, bool)
        u0, v0, u1, v1 = box
        outside[v0 // 2:(v1 + 1) // 2, u0 // 2:(u1 + 1) // 2] = False
        assert same[outside].all()
        inner = same[(v0 + 1) // 2:v1 // 2, (u0 + 1) // 2:u1 // 2]
        valid = d[v0:v1, u0:u1] > 0
        blocky_inside.append(inner.mean())
        assert valid.mean() > 0.3
        # the box holds the whole hand, with a margin
        uv = f.joints_uvd[:30, :2]
        assert np.all(uv[:, 0] >= u0 + 5) and np.all(uv[:, 0] < u1 - 5)
        assert np.all(uv[:, 1] >= v0 + 5) and np.all(uv[:, 1] < v1 - 5)
    assert np.mean(blocky_inside) < 0.9  # per-pixel noise there (flat 2x2 blocks only by chance)
    assert F.HAND_BOX_MARGIN_MM > 0


def test_full_frame_sensor_statistics_match_inside_and_outside_the_hand_box():
    """No seam in character at the box's border: noise and edge dropouts alike on both sides."""
    from scipy.ndimage import maximum_filter, minimum_filter

    err = {"in": [], "out": []}
    edge_missing = {"in": [], "out": []}
    for i in range(10):
        _, box = _layers_of(i)
        clean = _full(i).depth_mm.astype(np.float32)
        d = _full(i, cfg=SynthConfig()).depth_mm.astype(np.float32)
        inside = np.zeros(clean.shape, bool)
        u0, v0, u1, v1 = box
        inside[v0:v1, u0:u1] = True
        spread = maximum_filter(clean, 5) - minimum_filter(clean, 5)
        flat = (clean > 0) & (spread < 15) & (clean < 1500)
        edge = (maximum_filter(clean, 3) - minimum_filter(clean, 3) > 20) & (clean > 0)
        for k, m in (("in", inside), ("out", ~inside)):
            sel = flat & m & (d > 0)
            err[k].append(np.abs(d[sel] - clean[sel]))
            edge_missing[k].append(((d == 0) & edge & m).sum() / max((edge & m).sum(), 1))
    e_in, e_out = np.concatenate(err["in"]).mean(), np.concatenate(err["out"]).mean()
    assert 0.6 < e_in / e_out < 1.6
    m_in, m_out = np.mean(edge_missing["in"]), np.mean(edge_missing["out"])
    assert 0.3 < m_in < 0.9 and 0.3 < m_out < 0.9 and abs(m_in - m_out) < 0.15
