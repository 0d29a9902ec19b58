"""config.py: presets, --set overrides with type checks, YAML load/save, dict round trips."""
import dataclasses
import json
from pathlib import Path

import pytest

from handgan.config import (
    PRESETS,
    REMOVED_KEYS,
    DataConfig,
    OptimConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    leaf_keys,
    load_yaml,
    preset,
    save_yaml,
    to_dict,
)
from handgan.errors import HandganError
from handgan.models import Discriminator, Generator, ModelConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _get(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _as_text(value):
    """How a user would type ``value`` after --set KEY=."""
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


# --- presets ---------------------------------------------------------------------------------

def test_presets_build_their_networks():
    quick, seed = preset("quick"), preset("seed")
    assert (quick.data.size, quick.model.size, quick.model.width, quick.model.pose_hidden) == \
        (64, 64, 16, 256)
    assert (seed.data.size, seed.model.size, seed.model.width) == (128, 128, 64)
    assert (seed.optim.lr, seed.optim.epochs) == (1e-3, 50)  # the seed's hyper-parameters
    for cfg in (quick, seed):
        assert isinstance(cfg.model, ModelConfig)
        Generator(cfg.model), Discriminator(cfg.model)  # valid network shapes


def test_preset_is_a_copy():
    cfg = preset("quick")
    cfg.data.augment.rotation_deg = 3.0  # AugmentConfig is mutable; the preset must not be
    assert PRESETS["quick"].data.augment.rotation_deg == 180.0
    assert preset("quick") == PRESETS["quick"]


def test_unknown_preset_lists_choices():
    with pytest.raises(HandganError, match="unknown preset 'fast' .*quick, seed"):
        preset("fast")


# --- --set overrides -------------------------------------------------------------------------

def test_overrides_of_every_type():
    base = preset("seed")
    cfg = apply_overrides(base, [
        "optim.lr=3e-4",                   # float, exponent without a dot
        "model.width=32",                  # int inside the frozen ModelConfig
        "model.pose_hidden = 512",         # spaces around '='
        "data.augment.rotation_deg=45",    # float from an integer literal, two levels deep
        "data.augment.modes=com,rot",      # variable-length tuple
        "optim.betas=0.9, 0.99",           # fixed-length tuple
        "amp=no", "compile=1", "channels_last=False",  # bools
        "data.source=nyu:/data/nyu=x",     # str; only the first '=' splits
        "data.unlabeled=folder:/frames",   # Optional[str] set...
        "optim.max_steps=10",              # Optional[int] set
        "data.cube_mm=null",               # Optional[float] unset
        "mode=supervised",
    ])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.model == dataclasses.replace(base.model, width=32, pose_hidden=512)
    assert cfg.data.augment.rotation_deg == 45.0
    assert cfg.data.augment.modes == ("com", "rot")
    assert cfg.optim.betas == (0.9, 0.99)
    assert (cfg.amp, cfg.compile, cfg.channels_last) == (False, True, False)
    assert cfg.data.source == "nyu:/data/nyu=x"
    assert cfg.data.unlabeled == "folder:/frames" and cfg.optim.max_steps == 10
    assert cfg.data.cube_mm is None and cfg.mode == "supervised"
    assert base == PRESETS["seed"]  # the input is not changed

    unset = apply_overrides(cfg, ["data.unlabeled=none", "optim.max_steps=NULL"])
    assert unset.data.unlabeled is None and unset.optim.max_steps is None


def test_every_key_accepts_its_own_value_as_text():
    """Every field can be set with --set: the keys come from the dataclasses, not a list."""
    cfg = apply_overrides(preset("quick"), ["data.unlabeled=folder:x", "data.cube_mm=250"])
    keys = leaf_keys()
    assert "data.augment.rotation_deg" in keys and "model.pose_hidden" in keys
    for key in keys:
        assert apply_overrides(cfg, [f"{key}={_as_text(_get(cfg, key))}"]) == cfg, key


@pytest.mark.parametrize("item, message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr' (did you mean optim.lr"),
    ("lr=0.1", "unknown config key 'lr' (did you mean optim.lr or localizer.lr?)"),
    ("model.widht=8", "did you mean model.width"),
    ("optim.lr=abc", "optim.lr: expected a float, got 'abc'"),
    ("model.width=wide", "model.width: expected an integer, got 'wide'"),
    ("seed=1.5", "seed: expected an integer, got '1.5'"),
    ("amp=maybe", "amp: expected true or false, got 'maybe'"),
    ("optim.betas=0.5", "optim.betas: expected 2 comma-separated values, got '0.5'"),
    ("optim.lr=none", "optim.lr: expected a float, got 'none'"),  # not optional
    ("model.size=48", "model: size must be a power of two >= 32, got 48"),
    ("data.augment.modes=spin", "data.augment: augment modes must be"),
    ("data.centre=middle", "data: centre must be one of gt, com; got 'middle'"),
    ("optim.lr=-1", "optim: lr must be > 0, got -1.0"),
    ("data.size=64", "data.size (64) and model.size (128) differ"),
    ("data.augment=none", "data.augment is a group of settings, not a value; set one of: "
                          "data.augment.modes"),
    ("optim.lr", "override 'optim.lr': expected KEY=VALUE"),
])
def test_bad_overrides_are_one_line_errors(item, message):
    with pytest.raises(HandganError) as err:
        apply_overrides(preset("seed"), [item])
    text = str(err.value)
    assert message in text and "\n" not in text


def test_overrides_are_checked_together():
    cfg = apply_overrides(preset("seed"), ["model.size=64", "data.size=64"])  # either alone fails
    assert cfg.model.depth == 4 and cfg.data.size == 64
    assert apply_overrides(cfg, ["seed=1", "seed=2"]).seed == 2  # the last one wins


# --- dicts and YAML --------------------------------------------------------------------------

def test_to_dict_is_plain_and_round_trips():
    cfg = apply_overrides(preset("quick"), ["optim.max_steps=7", "data.augment.modes=rot"])
    d = to_dict(cfg)
    assert json.loads(json.dumps(d)) == d  # only plain types
    assert d["optim"]["betas"] == [0.5, 0.999] and d["model"]["width"] == 16
    assert from_dict(d) == cfg


def test_from_dict_rejects_unknown_nested_keys():
    with pytest.raises(HandganError, match=r"unknown config key 'data.augment.rotation' \(did you "
                                           r"mean data.augment.rotation_deg"):
        from_dict({"data": {"augment": {"rotation": 3}}})
    with pytest.raises(HandganError, match="data is a group of settings, not a value"):
        from_dict({"data": "nyu"})


def _with_key(d, key, value):
    """``d`` (nested dicts) with dotted ``key`` set to ``value``."""
    *sections, leaf = key.split(".")
    node = d
    for part in sections:
        node = node[part]
    node[leaf] = value
    return d


@pytest.mark.parametrize("key", sorted(REMOVED_KEYS))
def test_old_configs_with_removed_keys_left_off_still_load(tmp_path, key):
    # An old run's config.yaml (and its checkpoints' config) lists every key it had: a removed
    # option at the value that left it off is dropped; any other value is a one-line error
    # naming the commit that still has it.
    _, off, commit = REMOVED_KEYS[key]
    for value in off:
        old = _with_key(to_dict(preset("quick")), key, value)
        assert from_dict(old) == preset("quick")
        path = tmp_path / "config.yaml"
        path.write_text(json.dumps(old))  # JSON is YAML
        assert load_yaml(path) == preset("quick")
    assert apply_overrides(preset("seed"), [f"{key}={off[0]}"]) == preset("seed")
    bad = True if off[0] is False else 3 if off[0] in (None, 0, 1) else 0.5
    with pytest.raises(HandganError) as err:
        from_dict(_with_key(to_dict(preset("quick")), key, bad))
    assert str(err.value).startswith(f"{key} was removed") and commit in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(HandganError, match=f"{key} was removed"):
        apply_overrides(preset("quick"), [f"{key}={bad}"])
    assert key not in leaf_keys()


def test_save_load_round_trip(tmp_path):
    cfg = apply_overrides(preset("seed"), ["optim.lr=2.5e-05", "data.labeled_count=100",
                                           "loss.recons_mode=sample_floor", "loss.tau=0.1"])
    path = tmp_path / "run" / "config.yaml"
    save_yaml(cfg, path)
    assert load_yaml(path) == cfg
    text = path.read_text()
    assert "betas: [0.5, 0.999]" in text
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temp file left


def test_yaml_partial_over_a_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("preset: quick\n"
                    "optim: {lr: 3e-4, epochs: 5}\n"    # YAML 1.1 reads 3e-4 as a string
                    "model: {width: 8}\n"
                    "data:\n  unlabeled: folder:/frames\n  augment: {modes: [rot, none]}\n")
    cfg = load_yaml(path)
    expected = apply_overrides(preset("quick"), [
        "optim.lr=3e-4", "optim.epochs=5", "model.width=8", "data.unlabeled=folder:/frames",
        "data.augment.modes=rot,none"])
    assert cfg == expected


def test_yaml_without_preset_starts_from_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\n")
    assert load_yaml(path) == dataclasses.replace(TrainConfig(), seed=3)
    path.write_text("")
    assert load_yaml(path) == TrainConfig()


@pytest.mark.parametrize("text, message", [
    ("optim:\n  lr: [1\n", "not valid YAML at line"),
    ("- 1\n- 2\n", "expected a mapping of config keys, got list"),
    ("preset: fast\n", "unknown preset 'fast'"),
    ("optim: {lrr: 1}\n", "unknown config key 'optim.lrr'"),
    ("model: {width: 1.5}\n", "model.width: expected an integer, got 1.5"),
    ("model: {size: 48}\n", "model: size must be a power of two"),
])
def test_yaml_errors_name_the_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(HandganError) as err:
        load_yaml(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_yaml_file(tmp_path):
    with pytest.raises(HandganError, match="nope.yaml: no such config file"):
        load_yaml(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_files_are_the_presets(name):
    assert load_yaml(CONFIGS / f"{name}.yaml") == PRESETS[name]
    assert load_yaml(CONFIGS / f"{name}.yaml") == from_dict(to_dict(PRESETS[name]))


def test_few_labels_config_is_the_studied_variant():
    # configs/few-labels.yaml = quick + the study's gan-equi2-r45-cos overrides (docs/results.md)
    expected = apply_overrides(preset("quick"), [
        "loss.w_equivariance=2", "loss.equi_rotation_deg=45", "optim.lr_schedule=cosine"])
    assert load_yaml(CONFIGS / "few-labels.yaml") == expected


def test_seed_literal_config_is_the_seed_document_with_the_generator_options_off():
    literal = load_yaml(CONFIGS / "seed-literal.yaml")
    # the seed preset's sizes and optimiser, every method option at its default (off)
    expected = TrainConfig(data=DataConfig(size=128),
                           model=ModelConfig(size=128, width=64, pose_hidden=1024),
                           optim=OptimConfig(lr=1e-3, epochs=50, batch_size=64))
    assert literal == expected
    assert literal.loss.recons_mode == "sample_floor" and literal.loss.w_synth == 0
    assert literal.loss.w_gen_adv == 1 and literal.optim.lr_schedule == "constant"
    assert not literal.model.gen_render
    # the presets train the rendered generator (docs/results.md, round 6)
    for name in ("quick", "seed"):
        cfg = preset(name)
        assert cfg.model.gen_render
        assert cfg.loss.recons_mode == "pixel_l1" and cfg.loss.w_synth == 1


def test_gen_correction_is_inert_without_the_render_and_the_corrected_render_is_refused():
    # The seed's generator ignored model.gen_correction (seed-literal.yaml listed it as true);
    # with model.gen_render it was the corrected render, removed.
    literal = load_yaml(CONFIGS / "seed-literal.yaml")
    assert apply_overrides(literal, ["model.gen_correction=true"]) == literal
    with pytest.raises(HandganError, match="model.gen_correction was removed.*ff70ccc"):
        apply_overrides(preset("quick"), ["model.gen_correction=true"])
    old = to_dict(preset("quick"))
    old["model"]["gen_correction"] = True
    with pytest.raises(HandganError, match="model.gen_correction was removed"):
        from_dict(old)
