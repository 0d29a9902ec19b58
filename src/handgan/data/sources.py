"""Data source specs on the command line -> dataset readers.

    synthetic[:DIR]        our synthetic NYU-format dataset (generated into DIR if missing;
                           default DIR: data/synthetic)
    nyu:DIR[:SPLIT]        the NYU hand dataset (DIR/train, DIR/test, or test_1/test_2);
                           SPLIT names the one split to use (a folder with only test/ trains
                           on it only when named: nyu:DIR:test)
    icvl:DIR               ICVL (Training/ + Testing/, or DeepPrior++'s renamed layout)
    msra:DIR[:FOLD]        MSRA 2015; FOLD = held-out subject 0-8 (leave-one-subject-out)
    folder:DIR[:CAMERA]    a plain folder of 16-bit PNG / .npy depth frames, unlabelled;
                           CAMERA = nyu | icvl | msra | fx,fy,cx,cy[,width,height] (default nyu)

Every reader has the same interface (see ``data/nyu.py``: ``NYUSplit``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from handgan.errors import HandganError

KINDS = ("synthetic", "nyu", "icvl", "msra", "folder")
DEFAULT_SYNTHETIC_DIR = Path("data/synthetic")
# What `synthetic` generates when its folder does not exist yet.
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


def ensure_synthetic(spec: SourceSpec, seed: int = 0, workers: int | None = None,
                     progress: bool = True) -> None:
    """Generate the default synthetic dataset on first use (resumes an interrupted generation);
    ``workers`` None = every core (the bytes do not depend on it)."""
    from handgan.device import cores
    from handgan.synth.generate import read_manifest, synthesize_dataset

    workers = workers or cores()
    if spec.kind != "synthetic" or read_manifest(spec.root) is not None:
        return
    synthesize_dataset(spec.root, DEFAULT_SYNTHETIC_COUNTS["train"], DEFAULT_SYNTHETIC_COUNTS["test"],
                       seed=seed, workers=workers, progress=progress)
