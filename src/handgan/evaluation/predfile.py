"""The field's prediction (and ground-truth) files: one frame per line, J x 3 numbers ``u v d``.

``u``, ``v`` are pixels in the full depth image and ``d`` is depth in mm; numbers are separated by
spaces or tabs. The reader tolerates what real published files contain (``\\r\\n`` line ends,
trailing spaces or tabs, a final newline) and refuses everything else with a one-line
``HandganError`` naming the file and the 1-based line: a wrong count of numbers, a token that is
not a plain decimal number, NaN or infinity, an empty file, or a blank line (frames are matched to
the ground truth by line number, so a blank line would shift every frame after it).
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np

from handgan.atomic import atomic_write
from handgan.errors import HandganError

# A plain decimal number (optionally with exponent). float() alone would also take "nan", "inf",
# "1_000" and non-ASCII digits, none of which belong in these files.
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
# A whole line of numbers: one regex call per line keeps an 8252-line file fast.
_LINE_RE = re.compile(rf"[ \t]*{_NUMBER}(?:[ \t]+{_NUMBER})*[ \t]*")
_NON_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}
MAX_VALUE = 1e6  # px or mm; larger is a unit mistake

def read_predictions(path: str | os.PathLike, n_joints: int | None = None) -> np.ndarray:
    """Read a prediction or ground-truth file strictly -> (N, J, 3) float64 ``u v d``.

    Every line must hold 3 * ``n_joints`` numbers; ``None`` takes J from the first line. A
    missing or unreadable file or any format problem is a HandganError naming file and line.
    """
    path = Path(path)
    lines = _read_text(path).split("\n")
    if lines[-1] == "":  # the final newline
        lines.pop()
    if not lines or (len(lines) == 1 and not lines[0].strip()):
        raise HandganError(f"{path}: empty file (expected one line of u v d numbers per frame)")
    expected = None if n_joints is None else 3 * n_joints
    rows: list[list[str]] = []
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r")  # \r\n line ends
        tokens = line.split()
        if not tokens:
            raise HandganError(f"{path}: line {number} is blank (one frame per line, no blank lines)")
        if expected is None:
            if len(tokens) % 3:
                raise HandganError(f"{path}: line {number}: {len(tokens)} numbers, not a multiple "
                                   "of 3 (u v d per joint)")
            expected = len(tokens)
        if len(tokens) != expected:
            raise HandganError(f"{path}: line {number}: expected {expected} numbers "
                               f"({expected // 3} joints x u v d), found {len(tokens)}")
        if not _LINE_RE.fullmatch(line):
            raise HandganError(f"{path}: line {number}: {_describe_bad_token(line)}")
        rows.append(tokens)
    # Every token matched _NUMBER, so this conversion cannot fail; only overflow (1e999) can
    # still give a non-finite value. Values over MAX_VALUE would overflow the errors to inf.
    values = np.array(rows, dtype=np.float64)
    for bad, problem in ((~np.isfinite(values), "is not finite"),
                         (np.abs(values) > MAX_VALUE,
                          f"is not pixels or mm (at most {MAX_VALUE:g} in size)")):
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise HandganError(f"{path}: line {row + 1}: number {col + 1} "
                               f"({rows[row][col]!r}) {problem}")
    return values.reshape(len(rows), expected // 3, 3)


def check_frame_count(pred_path: str | os.PathLike, pred: np.ndarray, gt_path: str | os.PathLike,
                      gt: np.ndarray) -> None:
    """Refuse (HandganError naming both files and counts) a prediction file whose frames or
    joints do not match the ground truth's."""
    if pred.shape[0] != gt.shape[0]:
        raise HandganError(f"{pred_path}: {pred.shape[0]} frames, but the ground truth {gt_path} "
                           f"has {gt.shape[0]} (one line per test frame, in ground-truth order)")
    if pred.shape[1] != gt.shape[1]:
        raise HandganError(f"{pred_path}: {pred.shape[1]} joints per frame, but the ground truth "
                           f"{gt_path} has {gt.shape[1]}")


def write_predictions(path: str | os.PathLike, uvd: np.ndarray) -> Path:
    """Write (N, J, 3) finite ``u v d`` predictions in the field's format, atomically."""
    uvd = np.asarray(uvd, dtype=np.float64)
    if uvd.ndim != 3 or uvd.shape[-1] != 3 or uvd.shape[0] == 0 or uvd.shape[1] == 0:
        raise ValueError(f"expected a non-empty (N, J, 3) array, got shape {uvd.shape}")
    if not np.all(np.isfinite(uvd)):
        raise ValueError("predictions contain NaN or infinity; the format has no way to say so")
    buffer = io.BytesIO()
    # 6 decimals: 1e-6 px / 1e-6 mm, so a write -> read round trip is exact to 5e-7, far below
    # any model's precision (float32 at 1000 mm resolves ~6e-5 mm) and the 3 decimals of the
    # field's own files. Fixed-point keeps the files diff-friendly and free of exponents.
    np.savetxt(buffer, uvd.reshape(uvd.shape[0], -1), fmt="%.6f", delimiter=" ", newline="\n")
    path = Path(path)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return path


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise HandganError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise HandganError(f"{path}: is a folder, not a prediction file") from None
    except OSError as e:
        raise HandganError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise HandganError(f"{path}: line {line}: non-ASCII byte 0x{data[e.start]:02x} "
                           "(expected plain u v d numbers)") from None


def _describe_bad_token(line: str) -> str:
    """Say which token of a line that failed ``_LINE_RE`` is wrong."""
    for k, token in enumerate(line.split(), start=1):
        if token.lower() in _NON_FINITE:
            return f"number {k} ({token!r}) is not finite"
        if not _NUMBER_RE.fullmatch(token):
            return f"token {k} ({token!r}) is not a number"
    # Only whitespace other than spaces and tabs (e.g. a form feed or a lone \r) is left.
    return "unexpected whitespace character (numbers must be separated by spaces or tabs)"
