"""The hand localiser: refiner crops and targets, the iterated refinement, its place in a run
(stage, checkpoints, resume), evaluation with --centre com and located training crops."""
import hashlib
import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from handgan import inference
from handgan.cachebuild import load_or_build_cache
from handgan.cachesource import CropParams, LocatedCentres
from handgan.camera import NYU
from handgan.checkpoint import load_checkpoint, save_checkpoint
from handgan.config import apply_overrides, from_dict, preset
from handgan.data.sources import open_split, parse_source
from handgan.deviceaugment import FrameBatch
from handgan.errors import HandganError
from handgan.evaluation.evaluate import evaluate_checkpoint
from handgan.inference import Estimator
from handgan.localize import (
    LOCALIZER_FILE,
    CentreRefiner,
    HandDetector,
    Localizer,
    LocalizerConfig,
    candidate_choice,
    detection_candidates,
    detector_input,
    detector_points,
    fit_run_localizer,
    localisation_errors,
    localisation_summary,
    localizer_samples,
    points_to_cells,
    warp_frames,
)
from handgan.synth.frame import SynthConfig
from handgan.synth.generate import synthesize_dataset
from handgan.train import train


class ConstantNet(torch.nn.Module):
    """A refiner that always answers the same normalised position."""

    def __init__(self, value):
        super().__init__()
        self.value = torch.tensor(value, dtype=torch.float32)

    def forward(self, x):
        return self.value.expand(len(x), 3)


def flat_frame(depth_mm=800.0):
    """A frame with one square object: the detection finds its centre."""
    d = np.zeros((480, 640), np.uint16)
    d[200:280, 280:360] = depth_mm
    return d


def test_refiner_targets_are_the_true_centre_in_each_crops_frame():
    cfg = LocalizerConfig(samples_per_frame=5, offset_mm=60.0)
    truth = NYU.xyz_to_uvd(np.array([[20.0, -10.0, 800.0]]))
    s = localizer_samples(lambda i: flat_frame(), [0], truth, NYU, cfg, seed=3)
    assert s.crops.shape == (5, 1, 64, 64) and s.crops.dtype == np.float16
    assert s.frames.shape == (1, 1, 120, 160)  # every 4th pixel of 640 x 480
    # target = (truth - centre) / (cube / 2) on every axis: the centres rebuilt from the targets
    # are five different shifts of the truth, within a few offset scales of it
    centres = NYU.uvd_to_xyz(truth) - s.targets.astype(np.float64) * 200.0
    shifts = np.linalg.norm(centres - NYU.uvd_to_xyz(truth), axis=1)
    assert len({round(x, 3) for x in shifts}) == 5 and shifts.max() < 4 * 60.0
    # the fine refiner's crops: half the cube (100 mm per unit), shifts on its smaller scale
    assert s.fine_crops.shape == (5, 1, 64, 64)
    fine = np.linalg.norm(s.fine_targets.astype(np.float64) * 100.0, axis=1)
    assert len({round(x, 3) for x in fine}) == 5 and fine.max() < 4 * 25.0
    np.testing.assert_allclose(s.points, [(truth[0, :2] - 2) / 4], atol=1e-4)  # detector px
    none = localizer_samples(lambda i: flat_frame(), [0], truth, NYU,
                             LocalizerConfig(fine_cube_mm=0.0), seed=3)
    assert none.fine_crops.shape == (0, 1, 64, 64) and none.fine_targets.shape == (0, 3)


def marked_input(point, depth_mm=800.0):
    """A detector input of background with a 3 x 3 px object centred on ``point``."""
    x = torch.ones(1, 1, 120, 160)
    u, v = int(point[0]), int(point[1])
    x[0, 0, v - 1:v + 2, u - 1:u + 2] = depth_mm * 2 / 4000 - 1
    return x


def test_warped_detector_frames_keep_the_palm_on_its_target_cell():
    grid = (15, 20)
    points = torch.tensor([[40.0, 30.0], [100.0, 90.0], [150.0, 60.0], [80.0, 10.0]])
    x = torch.cat([marked_input(p) for p in points])
    g = torch.Generator().manual_seed(0)
    out, cells = warp_frames(x, points, grid, g)
    for b in range(len(points)):
        v, u = np.nonzero(out[b, 0].numpy() < 1.0)
        seen = np.array([u.mean(), v.mean()])  # the object's centre after the warp
        cell = int(cells[b, 0])
        target = (np.array([cell % grid[1], cell // grid[1]]) + cells[b, 1:].numpy()) * 8 - 0.5
        assert np.abs(seen - target).max() < 1.5
    # a pure scaling by 1.25 about the frame's centre: 25 % nearer, so depths / 1.25
    out, cells = warp_frames(x[:1], points[:1], grid, g, scale=(1.25, 1.25), rotation_deg=0.0,
                             shift_px=0.0)
    moved = (points[0].numpy() - [79.5, 59.5]) * 1.25 + [79.5, 59.5]
    np.testing.assert_allclose(cells[0].numpy(),
                               points_to_cells(torch.from_numpy(moved[None]), grid)[0].numpy(), atol=1e-6)
    depth = (out[0, 0][out[0, 0] < 1.0] + 1) * 2000
    np.testing.assert_allclose(depth.numpy(), 800.0 / 1.25, rtol=1e-5)


def test_detector_cells_decode_back_to_the_pixel():
    uv = np.array([[0.0, 0.0], [319.5, 239.5], [637.2, 478.9], [100.3, 410.0]])
    grid = (15, 20)  # 120 x 160 detector input, 8 px cells
    target = points_to_cells(torch.from_numpy(detector_points(uv, 4)), grid).numpy()
    out = torch.full((len(uv), 3, *grid), -10.0, dtype=torch.float64)
    for b, (cell, ox, oy) in enumerate(target):
        out[b, 0].view(-1)[int(cell)] = 10.0
        for channel, o in ((1, ox), (2, oy)):
            o = min(max(o, 1e-12), 1 - 1e-12)
            out[b, channel].view(-1)[int(cell)] = float(np.log(o / (1 - o)))
    np.testing.assert_allclose(detection_candidates(out, 4, 1)[0][:, 0], uv, atol=1e-6)
    x = detector_input(flat_frame(), 4)
    assert x.shape == (120, 160) and x[60, 80] == pytest.approx(800 * 2 / 4000 - 1)
    assert x[0, 0] == 1.0  # missing depth = background


def detector_output(peaks, grid=(15, 20)):
    """A detector's answer with the given {(cell x, cell y): logit} peaks (elsewhere -10) and
    every place at the cell's middle."""
    out = torch.zeros(1, 3, *grid)
    out[0, 0] = -10.0
    for (x, y), logit in peaks.items():
        out[0, 0, y, x] = logit
    return out


def test_detection_candidates_are_the_highest_peaks_one_per_blob():
    out = detector_output({(5, 7): 5.0, (6, 7): 4.0, (14, 7): 3.0, (1, 1): 1.0})
    uv, logits = detection_candidates(out, 4, 3)
    # cell middle: input px (c + 0.5) * 8 - 0.5, full frame 4 p + 2; (6, 7) is A's shoulder
    np.testing.assert_allclose(uv[0], [[176.0, 240.0], [464.0, 240.0], [48.0, 48.0]])
    np.testing.assert_allclose(logits, [[5.0, 3.0, 1.0]])
    hill = detector_output({})
    y, x = torch.meshgrid(torch.arange(15), torch.arange(20), indexing="ij")
    hill[0, 0] = -((x - 5).abs() + (y - 7).abs()).float()  # one peak: the rest are its slopes
    uv, logits = detection_candidates(hill, 4, 3)
    np.testing.assert_allclose(uv[0], [[176.0, 240.0]] * 3)
    np.testing.assert_allclose(logits, [[0.0] * 3])


class FixedDetector(torch.nn.Module):
    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x):
        return self.out.expand(len(x), -1, -1, -1)


class ForegroundVerifier(torch.nn.Module):
    """Scores a crop by how much of it is foreground: above ``share`` = a hand, logit ``gain``
    per unit of share."""

    def __init__(self, share, gain=100.0):
        super().__init__()
        self.share, self.gain = share, gain

    def forward(self, crops):
        return self.gain * ((crops < 1.0).float().mean(dim=(1, 2, 3)) - self.share)[:, None]


def test_candidate_choice_adds_the_detectors_log_odds_twice_to_the_verifiers():
    verifier = np.array([[-1.0, 2.0, 0.0], [-1.0, 4.0, 0.0], [5.0, -3.0, 9.0]])
    detector = np.array([[6.0, 4.0, 1.0], [6.0, 4.0, 1.0], [2.0, 1.0, 0.0]])
    # sums: 11, 10, 2 | 11, 12, 2 | 9, -1, 9 (a tie goes to the detector's better peak)
    np.testing.assert_array_equal(candidate_choice(verifier, detector), [0, 1, 0])


def test_the_verifier_outweighs_the_detectors_best_peak_only_where_it_is_surer():
    frame = np.zeros((480, 640), np.uint16)
    frame[230:250, 166:186] = 800  # A: small, at the detector's best peak
    frame[190:290, 414:514] = 800  # B: large, at its second peak
    detector = FixedDetector(detector_output({(5, 7): 5.0, (14, 7): 3.0}))
    cfg = LocalizerConfig(iterations=1, fine_iterations=1, candidates=2)
    zero = ConstantNet([0.0, 0.0, 0.0])

    def located(gain, candidates=2):
        loc = Localizer(replace(cfg, candidates=candidates), zero, detector=detector, fine=zero,
                        verifier=ForegroundVerifier(0.05, gain))
        return loc.locate(frame, NYU)

    # A fills ~0.5 % of its 400 mm crop, B ~12 %: the verifier prefers B by gain * 0.115 logits,
    # the detector A by 2 * (5 - 3) = 4
    np.testing.assert_allclose(located(100.0)[:2], [464.0, 240.0])  # 11.5 > 4: B
    np.testing.assert_allclose(located(20.0)[:2], [176.0, 240.0])  # 2.3 < 4: A kept
    np.testing.assert_allclose(located(100.0, candidates=1)[:2], [176.0, 240.0])  # no choice
    assert located(100.0)[2] == pytest.approx(800.0)


def test_refinement_moves_by_the_networks_answer_each_iteration():
    step = [0.1, -0.05, 0.02]  # normalised: half a 400 mm cube = 200 mm per unit
    cfg = LocalizerConfig(iterations=3, fine_iterations=2)
    loc = Localizer(cfg, ConstantNet(step))
    start = np.array([[320.0, 240.0, 800.0]])
    end = loc.refine([flat_frame()], start, NYU)
    moved = NYU.uvd_to_xyz(end[0]) - NYU.uvd_to_xyz(start[0])
    np.testing.assert_allclose(moved, 3 * 200.0 * np.array(step), atol=1e-6)
    zero = Localizer(cfg, ConstantNet([0.0, 0.0, 0.0]))
    np.testing.assert_allclose(zero.refine([flat_frame()], start, NYU), start, atol=1e-9)
    # then the fine stage: 2 steps on a 200 mm cube, 100 mm per unit
    fine_step = [-0.2, 0.1, 0.05]
    both = Localizer(cfg, ConstantNet(step), fine=ConstantNet(fine_step))
    moved = NYU.uvd_to_xyz(both.refine([flat_frame()], start, NYU)[0]) - NYU.uvd_to_xyz(start[0])
    np.testing.assert_allclose(moved, 600.0 * np.array(step) + 200.0 * np.array(fine_step),
                               atol=1e-6)


def test_state_round_trip_gives_the_same_centres():
    cfg = LocalizerConfig(width=4, detector_width=4)
    torch.manual_seed(0)
    loc = Localizer(cfg, CentreRefiner(cfg.size, cfg.width), detector=HandDetector(4),
                    fine=CentreRefiner(cfg.size, cfg.width),
                    verifier=CentreRefiner(cfg.size, cfg.width, outputs=1))
    back = Localizer.from_state(loc.state())
    assert back.fine is not None and back.detector is not None and back.verifier is not None
    frame = flat_frame()
    np.testing.assert_array_equal(loc.locate(frame, NYU), back.locate(frame, NYU))
    assert loc.fingerprint() == back.fingerprint()
    coarse_only = Localizer(cfg, loc.network, detector=loc.detector)
    assert coarse_only.fingerprint() != loc.fingerprint()
    with pytest.raises(HandganError, match="x.pt: its hand localiser does not load"):
        Localizer.from_state({"config": {"size": 64}}, where="x.pt")


NEW_KEYS = ("detector_lr", "detector_batch_size")  # added at 37107e0


def test_a_localiser_saved_before_the_detectors_own_lr_reads_as_it_trained(tmp_path):
    # Before 37107e0 a saved localizer section had no detector_lr / detector_batch_size: the
    # detector trained at the refiners' lr on half their batch. A full old section reads so
    # (config files, checkpoints, localizer.pt); a partial one takes the defaults.
    old = {k: v for k, v in asdict(LocalizerConfig(batch_size=128)).items() if k not in NEW_KEYS}
    cfg = from_dict({"localizer": old})
    assert (cfg.localizer.detector_lr, cfg.localizer.detector_batch_size) == (1e-3, 64)
    assert from_dict({"localizer": {"batch_size": 128}}).localizer.detector_lr == 1e-2
    loc = Localizer(LocalizerConfig(width=4), CentreRefiner(64, 4))
    state = loc.state()
    state["config"] = {k: v for k, v in state["config"].items() if k not in NEW_KEYS}
    assert Localizer.from_state(state).config == replace(loc.config, detector_lr=1e-3,
                                                         detector_batch_size=16)
    # A run's localizer.pt from then is reused by its resume: no retraining.
    frames = np.arange(4)
    identity = {"config": {k: v for k, v in asdict(cfg.localizer).items() if k not in NEW_KEYS},
                "seed": 0, "frames": hashlib.sha256(frames.tobytes()).hexdigest()}
    save_checkpoint(tmp_path / LOCALIZER_FILE, {"localizer": state, "identity": identity})
    found, record = fit_run_localizer(tmp_path, cfg.localizer, reader=None,
                                      labeled_frames=frames, val_frames=[])
    assert record is None and found.config.detector_lr == 1e-3


def test_localisation_summary_counts_frames_without_a_hand():
    truth = np.array([[320.0, 240.0, 800.0]] * 4)
    found = truth + np.array([[0, 0, 5.0], [0, 0, 20.0], [0, 0, 40.0], [np.nan] * 3])
    s = localisation_summary(localisation_errors(found, truth, NYU))
    assert s["frames"] == 4 and s["not_found"] == 1
    assert s["median_mm"] == pytest.approx(20.0) and s["within_10mm"] == pytest.approx(1 / 3, abs=1e-4)


def test_located_centres_centre_the_crops_and_name_frames_without_a_hand(tmp_path):
    synthesize_dataset(tmp_path / "s", 0, 6, seed=1, config=SynthConfig(scene="hand"),
                       progress=False)
    reader = open_split(parse_source(f"synthetic:{tmp_path / 's'}"), "test")
    truth = reader.joints_uvd()[:, reader.centre_joint]
    centres = truth + [0.0, 0.0, 7.0]
    centres[2] = np.nan
    located = LocatedCentres(centres, {2: "no hand found: test"}, "fixed")
    params = CropParams(size=64, cube_mm=300.0, centre="com")
    cache = load_or_build_cache(reader, tmp_path / "c", params, progress=False, on_bad="skip",
                                located=located)
    np.testing.assert_allclose(cache.transforms[:, 0:3], np.delete(centres, 2, axis=0))
    assert [b.reason for b in cache.bad_frames] == ["no hand found: test"]
    other = LocatedCentres(centres + 1.0, {2: "no hand found: test"}, "fixed")
    again = load_or_build_cache(reader, tmp_path / "c", params, progress=False, on_bad="skip",
                                located=other)
    assert again.path != cache.path  # other centres, another cache


@pytest.fixture(scope="module")
def localised_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("loc")
    cfg = apply_overrides(preset("quick"), [
        f"data.source=synthetic:{work / 'synth'}", f"data.cache_dir={work / 'cache'}",
        "model.width=8", "model.pose_hidden=32", "optim.batch_size=16", "optim.epochs=1",
        "device=cpu", "data.val_fraction=0.1", "localizer.epochs=2", "localizer.width=4",
        "localizer.detector_epochs=2", "localizer.detector_width=4",
        "sample_every_epochs=0"])
    synthesize_dataset(work / "synth", 64, 16, seed=cfg.seed, progress=False)
    run = train(cfg, work / "run", progress=False)
    return work, cfg, run


def test_a_run_trains_its_localiser_first_and_every_checkpoint_carries_it(localised_run):
    work, cfg, run = localised_run
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["event"] == "localizer" and records[0]["val_frames"] == 6
    assert records[0]["train_frames"] == 58 and records[0]["val_median_mm"] > 0
    saved = load_checkpoint(run / LOCALIZER_FILE)
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    for part in ("network", "detector", "fine", "verifier"):  # all four networks trained, kept
        for name, value in saved["localizer"][part].items():
            assert torch.equal(value, best["localizer"][part][name])
    est = Estimator.from_checkpoint(run / "checkpoints" / "best.pt", device="cpu")
    assert est.localizer is not None
    frame = open_split(parse_source(cfg.data.source), "test").depth(0)
    np.testing.assert_array_equal(est.locate(frame), est.localizer.locate(frame, NYU))


def test_resume_reuses_the_runs_localiser(localised_run):
    work, cfg, run = localised_run
    before = (run / LOCALIZER_FILE).stat().st_mtime_ns
    train(apply_overrides(cfg, ["optim.epochs=2"]), run, resume=True, progress=False)
    assert (run / LOCALIZER_FILE).stat().st_mtime_ns == before
    events = [json.loads(line)["event"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert events.count("localizer") == 1
    summary = json.loads((run / "summary.json").read_text())  # the resume's figures: whole run
    assert summary["steps_this_session"] < summary["steps"]
    assert summary["wall_seconds_total"] > summary["wall_seconds"]


def test_evaluate_com_centres_with_the_localiser_and_reports_how_far_it_lands(localised_run):
    work, cfg, run = localised_run
    m = evaluate_checkpoint(run / "checkpoints" / "best.pt", split="test", centre="com",
                            out=str(work / "ev"), progress=False, device="cpu",
                            cache_dir=str(work / "cache"))
    loc = m["localisation"]
    assert loc["method"] == "learned refiner" and loc["frames"] == 16
    est = Estimator.from_checkpoint(run / "checkpoints" / "best.pt", device="cpu")
    reader = open_split(parse_source(cfg.data.source), "test")
    truth = reader.joints_uvd()[:, reader.centre_joint]
    expected = localisation_errors(np.stack([est.locate(reader.depth(i)) for i in range(16)]),
                                   truth, NYU)
    assert loc["median_mm"] == pytest.approx(np.median(expected), abs=1e-3)
    saved = json.loads((work / "ev" / "metrics.json").read_text())
    assert saved["localisation"]["p90_mm"] == loc["p90_mm"]
    gt = evaluate_checkpoint(run / "checkpoints" / "best.pt", split="test", centre="gt", out="",
                             progress=False, device="cpu", cache_dir=str(work / "cache"))
    assert "localisation" not in gt
    # labelled-centre evaluation also gives the full-frame figure: the --centre com one
    assert gt["full_frame"]["mean_error_mm"] == pytest.approx(m["mean_error_mm"], rel=1e-9)
    assert gt["full_frame"]["localisation"] == loc


def test_crops_cut_on_the_device_give_the_same_centres_and_joints(localised_run, monkeypatch):
    """The GPU path (frames copied to the device once, every crop cut there) run on CPU
    tensors: the localiser's centres and the estimator's joints equal the host path's."""
    work, cfg, run = localised_run
    est = Estimator.from_checkpoint(run / "checkpoints" / "best.pt", device="cpu")
    reader = open_split(parse_source(cfg.data.source), "test")
    frames = [reader.depth(i) for i in range(16)]
    host = est.localizer.locate_batch(frames, NYU)
    on_device = est.localizer.locate_batch(FrameBatch(frames, "cpu", on_device=True), NYU)
    np.testing.assert_array_equal(on_device, host)
    want = est.estimate_batch(frames)
    class OnDevice(FrameBatch):
        def __init__(self, frames, device="cpu", on_device=None):
            super().__init__(frames, device, on_device=True)

    monkeypatch.setattr(inference, "FrameBatch", OnDevice)
    got = est.estimate_batch(frames)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a.centre_uvd, b.centre_uvd)
        np.testing.assert_array_equal(a.xyz, b.xyz)


def test_training_crops_centred_by_the_localiser(localised_run, tmp_path):
    work, cfg, run = localised_run
    com = apply_overrides(cfg, ["data.centre=com", "optim.max_steps=1"])
    run2 = train(com, tmp_path / "run", progress=False)
    localizer = Localizer.from_state(load_checkpoint(run2 / LOCALIZER_FILE)["localizer"])
    reader = open_split(parse_source(cfg.data.source), "train")
    ckpt = load_checkpoint(run2 / "checkpoints" / "last.pt")
    assert ckpt["crop"]["centre"] == "com"
    # the training cache's centres are the localiser's
    from handgan.batches import load_data
    data = load_data(com, progress=False, localizer=localizer)
    rows = data.train_cache.frame_index[:5]
    want = np.stack([localizer.locate(reader.depth(int(i)), NYU) for i in rows])
    np.testing.assert_allclose(data.train_cache.transforms[:5, 0:3], want, atol=1e-9)


def test_locate_frames_names_the_frames_without_a_hand_and_locates_the_others():
    cfg = LocalizerConfig(iterations=1)
    torch.manual_seed(0)
    loc = Localizer(cfg, ConstantNet([0.0, 0.0, 0.0]), detector=HandDetector(4))
    frames = [flat_frame(), np.zeros((480, 640), np.uint16), flat_frame(900.0)]
    centres, failures = loc.locate_frames(lambda i: frames[i], 3, NYU)
    assert list(failures) == [1] and failures[1] == "no hand found: all pixels are 0"
    assert np.isnan(centres[1]).all() and np.isfinite(centres[[0, 2]]).all()
    alone = loc.locate(frames[2], NYU)  # batched or alone: the same centre
    np.testing.assert_allclose(centres[2], alone, atol=1e-9)
