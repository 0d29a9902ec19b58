"""Run monitoring: a JSON-lines metrics log, a tqdm factory, and optional TensorBoard scalars.

``metrics.jsonl`` is the record of a run: one JSON object per line (a training log event or an
evaluation), appended and flushed as it happens, so a killed run keeps everything logged so far
and a resumed run appends to the same file, after dropping what was logged past its checkpoint.
TensorBoard is used only if it is installed.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from handgan.atomic import atomic_write_text


class JsonlWriter:
    """Append JSON objects, one per line, to ``path``; each line is flushed when written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(_plain(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def keep_records(path: str | Path, keep: Callable[[dict], bool]) -> None:
    """Rewrite a JSON-lines file atomically with only the records ``keep`` accepts (a line cut
    short by a kill is dropped too); no file, nothing to do."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and keep(record):
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


def progress_bar(total: int | None, initial: int = 0, enabled: bool = True,
                 desc: str = "train") -> tqdm:
    """The training progress bar over steps (``disable`` when not ``enabled``)."""
    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled,
                dynamic_ncols=True)


class ScalarWriter:
    """TensorBoard scalars when ``torch.utils.tensorboard`` imports, else a silent no-op."""

    def __init__(self, log_dir: str | Path):
        self._writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self._writer = SummaryWriter(str(log_dir))

    def add_scalars(self, values: Mapping[str, Any], step: int, prefix: str = "") -> None:
        if self._writer is None:
            return
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(f"{prefix}{name}", value, step)

    def add_image(self, tag: str, image, step: int) -> None:
        """An (H, W) uint8 grey image."""
        if self._writer is not None:
            self._writer.add_image(tag, image, step, dataformats="HW")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _plain(record: Mapping[str, Any]) -> dict:
    """JSON-safe: non-finite floats become None (strict JSON has no NaN)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()}
