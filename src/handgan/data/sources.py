"""Data source specs on the command line -> dataset readers.

    synthetic[:DIR]        our synthetic NYU-format dataset (default DIR: data/synthetic)
    nyu:DIR[:SPLIT]        the NYU hand dataset (DIR/train, DIR/test, or test_1/test_2);
                           SPLIT names the one split to use (a folder with only test/ trains
                           on it only when named: nyu:DIR:test)
    icvl:DIR               ICVL (Training/ + Testing/, or DeepPrior++'s renamed layout)
    msra:DIR[:FOLD]        MSRA 2015; FOLD = held-out subject 0-8 (leave-one-subject-out)
    folder:DIR[:CAMERA]    a plain folder of 16-bit PNG / .npy depth frames, unlabelled;
                           CAMERA = nyu | icvl | msra | fx,fy,cx,cy[,width,height] (default nyu)

Every reader has the same interface (see ``data/nyu.py``: ``NYUSplit``).

Parsing a spec and opening a split read files only: a synthetic source that is not there yet is
refused. Generating it is an explicit step, :func:`prepare_sources` (:func:`ensure_synthetic` for
one spec), taken before the sources are opened: by ``train`` once the run folder is checked
(``handgan train``, ``study labels``), and by ``handgan evaluate --data`` and ``handgan data
info``. In Python, call it before ``evaluate_checkpoint`` or ``load_data``.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from handgan.errors import HandganError

KINDS = ("synthetic", "nyu", "icvl", "msra", "folder")
DEFAULT_SYNTHETIC_DIR = Path("data/synthetic")
# What the explicit step (ensure_synthetic) generates for `synthetic` whose folder does not exist.
DEFAULT_SYNTHETIC_COUNTS = {"train": 4000, "test": 1000}
_SPLIT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    root: Path
    option: str | None = None  # MSRA fold, NYU split or folder camera

    def __str__(self) -> str:
        return f"{self.kind}:{self.root}" + (f":{self.option}" if self.option else "")


def parse_source(text: str) -> SourceSpec:
    """'nyu:/data/nyu' -> SourceSpec; a one-line HandganError for anything malformed."""
    kind, _, rest = text.partition(":")
    if kind not in KINDS:
        raise HandganError(f"unknown data source {text!r}: expected one of synthetic[:DIR], "
                           "nyu:DIR[:SPLIT], icvl:DIR, msra:DIR[:FOLD], folder:DIR[:CAMERA]")
    if kind == "synthetic":
        return SourceSpec(kind, Path(rest) if rest else DEFAULT_SYNTHETIC_DIR)
    if not rest:
        raise HandganError(f"data source {text!r} needs a folder: {kind}:DIR")
    option = None
    if kind in ("msra", "folder", "nyu"):
        # The option is whatever follows the last ':' if that is not part of the path itself:
        # an MSRA fold is a digit, an NYU split a name (train, test, test_1: no '/' or '.').
        head, sep, tail = rest.rpartition(":")
        if sep and head and (kind == "folder" or (kind == "msra" and tail.isdigit())
                             or (kind == "nyu" and _SPLIT_NAME.fullmatch(tail))):
            rest, option = head, tail
        if kind == "msra" and option is not None and not 0 <= int(option) <= 8:
            raise HandganError(f"data source {text!r}: MSRA fold must be a subject 0-8")
    return SourceSpec(kind, Path(rest), option)


def split_names(spec: SourceSpec) -> list[str]:
    """The splits a source offers, in the order a user expects to see them."""
    _check_generated(spec)
    if spec.kind in ("synthetic", "nyu"):
        from handgan.data.nyu import list_splits

        found = list_splits(spec.root)
        if spec.option is not None:  # nyu:DIR:SPLIT: that split alone
            if spec.option not in found:
                raise HandganError(f"{spec}: no split folder {spec.option!r} with a "
                                   f"joint_data.mat (found: {', '.join(found) or 'none'})")
            return [spec.option]
        return sorted(found, key=lambda s: (s != "train", s))
    if spec.kind == "icvl":
        from handgan.data.icvl import available_splits

        return available_splits(spec.root)
    if spec.kind == "msra":
        return ["train", "test"] if spec.option is not None else ["all"]
    return ["all"]


def pick_test_split(names: list[str]) -> str | None:
    """Of a source's splits, the one a run reports as its test figure: "test", else a single
    test sequence (ICVL as DeepPrior++ ships it, test_seq_1 alone); None where there is none
    (msra:DIR without a fold, a folder)."""
    if "test" in names:
        return "test"
    sequences = [n for n in names if n.startswith("test_seq")]
    return sequences[0] if len(sequences) == 1 else None


def open_split(spec: SourceSpec, split: str):
    """The reader for one split of a source."""
    _check_generated(spec)
    if spec.kind in ("synthetic", "nyu"):
        from handgan.data.nyu import NYUSplit

        return NYUSplit(spec.root, split)
    if spec.kind == "icvl":
        from handgan.data.icvl import ICVLSplit

        return ICVLSplit(spec.root, split)
    if spec.kind == "msra":
        from handgan.data.msra import MSRADataset, msra_fold

        if spec.option is None:
            if split != "all":
                raise HandganError(f"{spec}: give a fold (msra:DIR:FOLD) to get train/test splits")
            return MSRADataset(spec.root)
        train, test = msra_fold(spec.root, int(spec.option))
        if split not in ("train", "test"):
            raise HandganError(f"{spec}: no split {split!r} (train or test)")
        return train if split == "train" else test
    from handgan.data.folder import FolderFrames, parse_intrinsics

    if split != "all":
        raise HandganError(f"{spec}: a folder source has one split, 'all'")
    return FolderFrames(spec.root, parse_intrinsics(spec.option or "nyu"))


def missing_synthetic(spec: SourceSpec) -> bool:
    """Whether ``spec`` is a synthetic source whose dataset is not there yet (or not complete:
    an interrupted generation)."""
    from handgan.synth.generate import read_manifest

    return spec.kind == "synthetic" and read_manifest(spec.root) is None


def ensure_synthetic(spec: SourceSpec, seed: int = 0, workers: int | None = None,
                     progress: bool = True) -> None:
    """The explicit generation step: make a synthetic source's dataset if it is not there yet
    (``DEFAULT_SYNTHETIC_COUNTS`` frames; resumes an interrupted generation); nothing for any
    other source. ``progress``: a one-line message and a progress bar on stderr. ``workers``
    None = every core (the bytes do not depend on it)."""
    from handgan.device import cores
    from handgan.synth.generate import synthesize_dataset

    if not missing_synthetic(spec):
        return
    n_train, n_test = DEFAULT_SYNTHETIC_COUNTS["train"], DEFAULT_SYNTHETIC_COUNTS["test"]
    if progress:
        print(f"{spec.root}: generating the synthetic dataset ({n_train:,} training + "
              f"{n_test:,} test frames, seed {seed}); done once, later runs reuse it",
              file=sys.stderr, flush=True)
    synthesize_dataset(spec.root, n_train, n_test, seed=seed, workers=workers or cores(),
                       progress=progress)


def prepare_sources(specs: Iterable[str | None], seed: int = 0, progress: bool = True) -> None:
    """What a command does before a run opens its data: :func:`ensure_synthetic` for each source
    spec (e.g. ``data.source`` and ``data.unlabeled``; None, "", "none" and "null" stand for
    no source)."""
    for text in specs:
        if text and text.lower() not in ("none", "null"):
            ensure_synthetic(parse_source(text), seed=seed, progress=progress)


def _check_generated(spec: SourceSpec) -> None:
    if missing_synthetic(spec):
        raise HandganError(f"{spec}: no synthetic dataset in {spec.root} yet; the commands "
                           "generate it on first use (in Python: handgan.data.sources."
                           f"prepare_sources([{str(spec)!r}]) first)")
