"""One typed config object per training run: nested dataclasses, two presets, YAML and ``--set``.

Precedence, lowest first: the dataclass defaults (or a preset), a YAML file, ``--set KEY=VALUE``
overrides. The resolved config is what a run saves (``RUN/config.yaml`` and in its checkpoints).

    cfg = preset("quick")                                   # or load_yaml("configs/quick.yaml")
    cfg = apply_overrides(cfg, ["optim.lr=3e-4", "model.width=32", "data.unlabeled=none"])
    save_yaml(cfg, "runs/x/config.yaml")

The ``--set`` keys are the dataclass fields themselves (``optim.lr``,
``data.augment.rotation_deg``), and values are converted and checked against each field's type
hint, so there is no second list of keys to maintain. A YAML file holds the same nested keys, in
full or in part, with an optional top-level ``preset: quick`` that it is applied on top of.

Every config class is frozen except :class:`~handgan.augment.AugmentConfig` (owned by augment.py);
change a config with :func:`apply_overrides` or ``dataclasses.replace``, never in place.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from handgan.atomic import atomic_write
from handgan.augment import AugmentConfig
from handgan.cachebuild import ON_BAD
from handgan.cachesource import CENTRES
from handgan.errors import HandganError
from handgan.localize import LocalizerConfig, saved_config
from handgan.models import ModelConfig

TRAIN_MODES = ("gan", "supervised")
RECONS_MODES = ("sample_floor", "pixel_l1")
SYNTH_POSE_SOURCES = ("mix", "finger", "rotate", "unlabeled")
LR_SCHEDULES = ("constant", "cosine")
PIPELINES = ("host", "device")


def _check(ok: bool, message: str) -> None:
    """``__post_init__`` checks raise ValueError; the loaders turn it into a HandganError."""
    if not ok:
        raise ValueError(message)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _at_least(cfg: Any, low: int, names: str, optional: bool = False) -> None:
    """Each field in ``names`` (space-separated) is >= ``low`` (or None, if ``optional``)."""
    for name in names.split():
        value = getattr(cfg, name)
        _check((optional and value is None) or value >= low,
               f"{name} must be >= {low}, got {value}")


@dataclass(frozen=True)
class DataConfig:
    """Where the crops come from and how they are made."""

    source: str = "synthetic"        # data source spec (synthetic[:DIR], nyu:DIR, icvl:DIR, ...)
    unlabeled: str | None = None     # extra source read without its labels (GAN mode's real/fake)
    labeled_fraction: float | None = 1.0  # share of training frames keeping labels, in (0, 1]
    labeled_count: int | None = None  # exact number of labelled frames; wins over the fraction
    split_seed: int = 0              # which frames keep their labels (same seed, same split)
    val_fraction: float = 0.05       # training frames held out (labelled) to choose best.pt
    size: int = 128                  # crop side in px; must equal model.size
    cube_mm: float | None = None     # crop cube side in mm; None = the dataset's usual cube
    centre: str = "gt"               # crop centre: "gt" (from labels) or "com" (hand localisation)
    on_bad: str = "stop"             # unreadable frame or no hand found: "stop" (error) | "skip"
    cache_dir: str = ".handgan-cache"  # preprocessed crops are cached here between runs
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # online crop augmentation
    pipeline: str = "host"           # batches made by "host" processes or on the "device"

    def __post_init__(self) -> None:
        _check(self.labeled_fraction is not None or self.labeled_count is not None,
               "set labeled_fraction or labeled_count (both are none)")
        if self.labeled_fraction is not None:
            _check(0.0 < self.labeled_fraction <= 1.0,
                   f"labeled_fraction must be in (0, 1], got {self.labeled_fraction}")
        _at_least(self, 1, "labeled_count", optional=True)
        _check(0.0 <= self.val_fraction < 0.5,
               f"val_fraction must be in [0, 0.5), got {self.val_fraction}")
        if self.cube_mm is not None:
            _check(self.cube_mm > 0, f"cube_mm must be > 0, got {self.cube_mm}")
        _choice("centre", self.centre, CENTRES)
        _choice("on_bad", self.on_bad, ON_BAD)
        _choice("pipeline", self.pipeline, PIPELINES)
        _check(self.pipeline == "host" or not (self.augment.pixel_dropout_p
                                               or self.augment.depth_noise_sigma_mm),
               "pipeline=device draws no sensor noise: set augment.pixel_dropout_p and "
               "augment.depth_noise_sigma_mm to 0, or use pipeline=host")


@dataclass(frozen=True)
class LossConfig:
    """Weights and options of the seed's losses (see losses.py for the formulas and signs).

    ``tau`` is in normalised depth units squared (1.0 = half the crop cube, 150 mm for a 300 mm
    cube). With ``recons_mode="sample_floor"`` (the seed as written) it floors each sample's mean
    squared pixel error: 0.001 is an RMS error of 0.032, about 5 mm for a 300 mm cube, the order of
    the sensor noise, below which a sample gives no gradient. With ``"pixel_l1"`` (the presets) it
    caps each pixel's absolute error (1.0: no cap within the crop's range).
    """

    w_joint: float = 1.0             # weight of L_J, the pose regression loss on labelled crops
    w_gan: float = 1.0               # weight of L_gan in the discriminator's loss
    w_recons: float = 1.0            # weight of L_recons in the generator's loss
    w_gen_adv: float = 1.0           # weight of the generator's non-saturating adversarial term
    tau: float = 0.001               # reconstruction clip, normalised depth^2 (see the docstring)
    recons_mode: str = "sample_floor"  # sample_floor (the seed as first read) | pixel_l1
    w_equivariance: float = 0.0      # Dis's loss += w * ||Dis_pose(aug(x_u)) - aug(Dis_pose(x_u))||^2
    equi_rotation_deg: float | None = None  # views' in-plane rotation range; None = data.augment's
    # The generator's fidelity (see losses.reconstruction_loss and docs/training.md):
    w_hand: float = 1.0              # weight of hand-region pixels in L_recons (1 = all pixels alike)
    gen_warmup_epochs: float = 0.0   # Gen trains on L_recons alone (no adversarial term) this long
    # Skeleton-space augmentation: the pose head also learns from (Gen(J'), J') for new poses J'.
    w_synth: float = 0.0             # Dis's loss += w * L_J(Dis_pose(Gen(J')), J'), ramped in
    synth_poses: str = "mix+finger+rotate"  # sources of J' ('+'-joined: mix, finger, rotate, unlabeled)
    synth_ramp_epochs: float = 5.0   # w_synth ramps linearly from 0 over this many epochs
    synth_turn_deg: float = 30.0     # largest 3D turn of a "rotate" pose about its palm centre

    def __post_init__(self) -> None:
        _at_least(self, 0, "w_joint w_gan w_recons w_gen_adv tau w_equivariance")
        _choice("recons_mode", self.recons_mode, RECONS_MODES)
        _at_least(self, 0, "w_hand gen_warmup_epochs w_synth synth_ramp_epochs")
        _check(0 <= self.synth_turn_deg <= 180,
               f"synth_turn_deg must be in [0, 180], got {self.synth_turn_deg}")
        sources = self.synth_pose_sources
        _check(bool(sources) and all(x in SYNTH_POSE_SOURCES for x in sources)
               and len(set(sources)) == len(sources),
               f"synth_poses must be '+'-joined names from {', '.join(SYNTH_POSE_SOURCES)}, "
               f"each once; got {self.synth_poses!r}")
        _at_least(self, 0, "equi_rotation_deg", optional=True)

    @property
    def synth_pose_sources(self) -> tuple[str, ...]:
        return tuple(x.strip() for x in self.synth_poses.split("+") if x.strip())


@dataclass(frozen=True)
class OptimConfig:
    """Adam for both networks, with the seed's learning rate and DCGAN's betas."""

    lr: float = 1e-3                 # Adam learning rate (the seed's 0.001), both networks
    betas: tuple[float, float] = (0.5, 0.999)  # Adam betas; beta1 = 0.5 as in DCGAN
    weight_decay: float = 0.0        # L2 weight decay (Adam's, not decoupled)
    epochs: int = 50                 # passes over all training frames (the seed: 50)
    batch_size: int = 64             # global batch of labelled crops (split across DDP ranks)
    max_steps: int | None = None     # stop after this many steps, whatever the epochs (smoke runs)
    lr_schedule: str = "constant"    # "constant" (the seed) | "cosine": lr * (1 + cos(pi t/T)) / 2

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check(all(0.0 <= b < 1.0 for b in self.betas),
               f"betas must be in [0, 1), got {self.betas}")
        _at_least(self, 0, "weight_decay")
        _at_least(self, 1, "epochs batch_size")
        _at_least(self, 1, "max_steps", optional=True)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; saved with the run and in each checkpoint."""

    mode: str = "gan"                # "gan" (the seed's method) | "supervised" (pose net alone)
    seed: int = 0                    # seeds python, numpy and torch (DDP: seed * world + rank)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    localizer: LocalizerConfig = field(default_factory=LocalizerConfig)  # hand localiser stage
    device: str = "auto"             # "auto" (CUDA if available), "cpu", "cuda", "cuda:1", ...
    amp: bool = True                 # bf16 autocast; applied on CUDA only, ignored on CPU
    channels_last: bool = True       # channels-last memory format; CUDA only
    compile: bool = False            # torch.compile the networks (slow start, faster steps)
    num_workers: int = 2             # processes preparing (augmenting) batches ahead, per rank
    threads: int | None = None       # CPU threads; None = the cores other jobs leave free at start
    log_every: int = 50              # log losses every this many steps
    eval_every_epochs: int = 1       # evaluate (validation and test) every this many epochs
    sample_every_epochs: int = 1     # GAN mode: write samples/epoch_NNN.png (real | Gen(J)); 0 = off

    def __post_init__(self) -> None:
        _choice("mode", self.mode, TRAIN_MODES)
        _at_least(self, 0, "seed")
        _check(self.data.size == self.model.size,
               f"data.size ({self.data.size}) and model.size ({self.model.size}) differ; "
               "set both to the same crop size")
        _at_least(self, 0, "num_workers")
        _check(self.threads is None or self.threads >= 1,
               f"threads must be >= 1 (or null), got {self.threads}")
        _at_least(self, 1, "log_every")
        _at_least(self, 0, "sample_every_epochs")
        _at_least(self, 1, "eval_every_epochs")


# The method both presets train (docs/results.md, rounds 5 and 6: the line that beats the same
# recipe without the generator at 5 % and 10 % labels): Gen renders the skeleton (learned shape,
# the crop's centre ray, a depth camera's missing pixels) and trains on L_recons as absolute
# error, hand pixels weighted 5; Dis learns from labelled crops, the real/fake head, the
# equivariance term on unlabelled crops and (Gen(J'), J') pairs of new poses; cosine learning
# rate. The seed document's formulation stays in configs/seed-literal.yaml.
def _method_model(edge_dropout: float) -> dict:
    return dict(gen_render=True, gen_edge_dropout=edge_dropout, gen_pixel_dropout=0.01)


def _method_loss() -> LossConfig:
    return LossConfig(recons_mode="pixel_l1", tau=1.0, w_hand=5.0, w_gen_adv=0.0,
                      gen_warmup_epochs=2.0, w_synth=1.0, synth_poses="mix+finger+rotate+unlabeled",
                      w_equivariance=2.0, equi_rotation_deg=45.0)


# quick: 64 x 64 and narrow networks, for a first run on a laptop CPU in about 10 minutes.
# Measured on a 2-core Xeon (torch 2.13 CPU, batches augmented in the training process): see
# docs/results.md for the step's labelled crops/s and the main job's wall time.
# seed: the seed's set-up, 128 x 128 crops, Adam lr 0.001 for 50 epochs, DCGAN-width networks.
# The sensor's edge dropout is per crop pixel, so it depends on the crop size (docs/training.md).
PRESETS: dict[str, TrainConfig] = {
    "quick": TrainConfig(
        # crops shifted by 10 mm (not 5): whole-frame use centres them by the localiser, whose
        # median error is about 9 mm (docs/results.md, "From a dataset or a camera to joints")
        data=DataConfig(size=64, augment=AugmentConfig(translation_sigma_mm=10.0)),
        model=ModelConfig(size=64, width=16, pose_hidden=256, **_method_model(0.1)),
        loss=_method_loss(),
        optim=OptimConfig(lr=1e-3, epochs=50, batch_size=64, lr_schedule="cosine"),
        num_workers=0,  # on 2 cores a loader process only competes with the training step
    ),
    "seed": TrainConfig(
        data=DataConfig(size=128),
        model=ModelConfig(size=128, width=64, pose_hidden=1024, **_method_model(0.2)),
        loss=_method_loss(),
        optim=OptimConfig(lr=1e-3, epochs=50, batch_size=64, lr_schedule="cosine"),
    ),
}


def preset(name: str) -> TrainConfig:
    """A fresh copy of a preset: ``preset("quick")``; HandganError for an unknown name."""
    if name not in PRESETS:
        raise HandganError(f"unknown preset {name!r} (choices: {', '.join(PRESETS)})")
    return copy.deepcopy(PRESETS[name])  # AugmentConfig is mutable: never hand out the original


# Options removed after the label study measured them useless or harmful (issue 15; the figures
# are in docs/results.md, "Options removed after the study"); the commit named with each still
# has it. A saved config (an old run's config.yaml, the config inside its checkpoints) lists every
# key: a removed key at a value that left it off is dropped, any other value is a one-line error.
REMOVED_KEYS: dict[str, tuple[Any, tuple[Any, ...], str]] = {  # key: (type, off values, commit)
    "loss.w_cycle": (float, (0.0,), "6a3f375"),
    "loss.fake_pose_loss": (bool, (False,), "6a3f375"),
    "loss.pose_perturb_std": (float, (0.0,), "6a3f375"),
    "loss.gen_unlabeled_poses": (bool, (False,), "6a3f375"),
    "loss.teacher_ema": (float, (0.0,), "6a3f375"),
    "loss.equi_target_eval": (bool, (False,), "6a3f375"),
    "loss.equi_target_views": (int, (1,), "6a3f375"),
    "loss.equi_view_dropout": (float, (0.0,), "6a3f375"),
    "loss.equi_tilt_deg": (float | None, (None, 0.0), "6a3f375"),
    "data.augment.tilt_deg": (float, (0.0,), "6a3f375"),
    "loss.w_bone_prior": (float, (0.0,), "6a3f375"),
    "model.noise_dim": (int, (0,), "6a3f375"),
    "optim.unlabeled_ratio": (int, (1,), "6a3f375"),
    "loss.gen_adv": (str, ("bce",), "ff70ccc"),
    "loss.synth_gate": (float, (0.0,), "ff70ccc"),
    "loss.equi_translation_mm": (float | None, (None,), "ff70ccc"),
    "loss.equi_scale_sigma": (float | None, (None,), "ff70ccc"),
    "model.gen_skeleton": (bool, (False,), "ff70ccc"),
    # true: the corrected render with gen_render; inert without it (the seed's Gen, _merge)
    "model.gen_correction": (bool, (False,), "ff70ccc"),
    "optim.warmup_epochs": (float, (0.0,), "d15c55f"),
}


_NONE_WORDS = ("none", "null", "~")
_TRUE_WORDS = ("true", "1", "yes", "on")
_FALSE_WORDS = ("false", "0", "no", "off")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as nested plain dicts of str/int/float/bool/None/list (YAML-, JSON- and
    ``torch.load(weights_only=True)``-safe; tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (tuple, list)):
        return [to_dict(v) for v in cfg]
    return cfg


def from_dict(d: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """A TrainConfig from nested dicts (:func:`to_dict`'s, or YAML's), over ``base`` (default
    ``TrainConfig()``) for the keys left out; a bad key or value is a one-line HandganError."""
    return _merge(copy.deepcopy(base) if base is not None else TrainConfig(), d, "")


def apply_overrides(cfg: TrainConfig, overrides: Iterable[str]) -> TrainConfig:
    """A new config with ``KEY=VALUE`` overrides applied in order (the CLI's ``--set``).

    VALUE is converted by the field's type: bool as true/false/1/0/yes/no/on/off, tuples as comma
    lists (``optim.betas=0.9,0.99``), ``none``/``null`` for optional fields. The checks run once
    all overrides are in, so related fields can change together (``model.size=64 data.size=64``).
    """
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise HandganError(f"override {item!r}: expected KEY=VALUE, e.g. optim.lr=3e-4")
        *sections, leaf = key.split(".")
        node = nested
        for part in sections:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # "data.augment=x" then "data.augment.modes=y"
                raise HandganError(f"{key}: {'.'.join(sections)} was itself set to a value")
        node[leaf] = value.strip()  # a later override of the same key wins
    return _merge(copy.deepcopy(cfg), nested, "")


def leaf_keys(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """Every settable dotted key (``["mode", "seed", "data.source", ...]``), from the fields."""
    keys = []
    for name, tp in _hints(cls).items():
        if dataclasses.is_dataclass(tp):
            keys += leaf_keys(tp, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _hints(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass's init fields, in field order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _merge(obj: Any, d: Any, prefix: str) -> Any:
    """``obj`` (a dataclass) with the values in nested dict ``d`` converted and applied."""
    where = f"{prefix.rstrip('.')}: " if prefix else ""
    if not isinstance(d, Mapping):
        raise HandganError(f"{where}expected a mapping of config keys, got {_show(d)}")
    hints = _hints(type(obj))
    changes, corrected = {}, False
    for name, value in d.items():
        key = f"{prefix}{name}"
        if key in REMOVED_KEYS:
            if key == "model.gen_correction" and _convert(value, bool, key):
                corrected = True  # refused below if gen_render is on
            else:
                _check_removed(key, value)
            continue
        if name not in hints:
            raise HandganError(_unknown_key(str(key)))
        tp = hints[name]
        if tp is LocalizerConfig and isinstance(value, Mapping):
            value = saved_config(value)
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                options = ", ".join(leaf_keys(tp, f"{key}."))
                raise HandganError(f"{key} is a group of settings, not a value; set one of: "
                                   f"{options}")
            changes[name] = _merge(getattr(obj, name), value, f"{key}.")
        else:
            changes[name] = _convert(value, tp, key)
    try:
        merged = dataclasses.replace(obj, **changes)
    except ValueError as e:  # a __post_init__ check
        raise HandganError(f"{where}{e}") from None
    if corrected and merged.gen_render:
        _check_removed("model.gen_correction", True)  # the corrected render: refused
    return merged


def _check_removed(key: str, value: Any) -> None:
    """Accept (and drop) a removed key at a value that left it off; refuse any other."""
    tp, off, commit = REMOVED_KEYS[key]
    try:
        ok = _convert(value, tp, key) in off
    except HandganError:
        ok = False
    if not ok:
        raise HandganError(f"{key} was removed after the label study showed it did not help "
                           f"(docs/results.md, \"Options removed after the study\"); only "
                           f"{' or '.join(_yaml_word(v) for v in off)} is accepted, for old "
                           f"configs; commit {commit} still has it")


def _yaml_word(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _unknown_key(key: str) -> str:
    known = leaf_keys()
    last = key.rsplit(".", 1)[-1]
    near = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    near += [k for k in known if k.rsplit(".", 1)[-1] == last and k not in near]  # lr -> optim.lr
    hint = f" (did you mean {' or '.join(near[:3])}?)" if near else ""
    return f"unknown config key {key!r}{hint}"


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, (dict, list)) else type(value).__name__


def _convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` (a string from --set, or a YAML scalar/list) as type hint ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            return None
        (inner,) = (a for a in args if a is not type(None))  # X | None only
        return _convert(value, inner, key)
    if origin is tuple:
        return _convert_tuple(value, args, key)
    if tp is bool:
        if isinstance(value, int) and value in (0, 1):  # bools included
            return bool(value)
        word = value.strip().lower() if isinstance(value, str) else None
        if word in _TRUE_WORDS + _FALSE_WORDS:
            return word in _TRUE_WORDS
        raise HandganError(f"{key}: expected true or false, got {_show(value)}")
    if tp in (int, float):
        kinds = (int, float) if tp is float else (int,)  # an int key takes no 2.5 (nor 2.0)
        if isinstance(value, kinds) and not isinstance(value, bool):
            return tp(value)
        if isinstance(value, str):  # YAML reads 3e-4 (no dot) as a string: accept it here
            try:
                return tp(value.strip())
            except ValueError:
                pass
        raise HandganError(f"{key}: expected {'an integer' if tp is int else 'a float'}, got "
                           f"{_show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise HandganError(f"{key}: expected a string, got {_show(value)}")
    raise TypeError(f"{key}: unsupported config type {tp}")


def _convert_tuple(value: Any, args: tuple, key: str) -> tuple:
    if isinstance(value, str):
        text = value.strip().strip("()[]").strip()
        items: list = [s.strip() for s in text.split(",")] if text else []
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise HandganError(f"{key}: expected a comma-separated list, got {_show(value)}")
    item_types = [args[0]] * len(items) if args[1:] == (Ellipsis,) else args
    if len(items) != len(item_types):
        raise HandganError(f"{key}: expected {len(args)} comma-separated values, "
                           f"got {_show(value)}")
    return tuple(_convert(v, t, key) for v, t in zip(items, item_types))


class _Dumper(yaml.SafeDumper):
    """Safe YAML with sections as blocks and lists (modes, betas) on one line: [0.5, 0.999]."""


_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data,
                                                         flow_style=True))


def load_yaml(path: str | os.PathLike) -> TrainConfig:
    """A config from a YAML file: a full config, or a partial one over ``preset: NAME`` (else
    over ``TrainConfig()``). Every error is a one-line HandganError starting with the path."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HandganError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HandganError(f"{path}: cannot read config file ({e})") from None
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise HandganError(f"{path}: not valid YAML{where}: {problem}") from None
    d = {} if d is None else d
    if not isinstance(d, dict):
        raise HandganError(f"{path}: expected a mapping of config keys, got {type(d).__name__}")
    try:
        name = d.pop("preset", None)
        base = preset(str(name)) if name is not None else TrainConfig()
        return from_dict(d, base)
    except HandganError as e:
        raise HandganError(f"{path}: {e}") from None


def save_yaml(cfg: TrainConfig, path: str | os.PathLike) -> None:
    """Write ``cfg`` in full as YAML, atomically (:func:`handgan.atomic.atomic_write`)."""
    text = yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
