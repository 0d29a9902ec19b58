"""What every dataset reader shares: reading bytes, PNG headers and pixels, label numbers, frame
sizes, and the reader methods. Each turns a user's bad file into a one-line HandganError that
names the file."""
from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from handgan.camera import Intrinsics
from handgan.errors import HandganError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOR_TYPES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}
# Depth cameras give at most a few megapixels; a larger "frame" is a mistake or a decompression
# bomb, refused from its header before any pixel is decoded.
MAX_FRAME_PIXELS = 4096 * 4096


def one_line(e: BaseException) -> str:
    """An exception as "Type: message" on one line."""
    return " ".join(f"{type(e).__name__}: {e}".split())


def read_bytes(path: Path, what: str) -> bytes:
    """The whole file; "<path>: <what> not found" and friends for the usual failures."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise HandganError(f"{path}: {what} not found") from None
    except OSError as e:
        raise HandganError(f"{path}: cannot read {what} ({e.strerror or e})") from None


def read_text(path: Path, what: str) -> str:
    """The whole file as UTF-8 (a BOM dropped); "not a text file" for other bytes."""
    try:
        return read_bytes(path, what).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise HandganError(f"{path}: {what} is not a text file (not UTF-8/ASCII)") from None


def parse_numbers(path: Path, rows: list[list[str]], line_numbers: list[int]) -> np.ndarray:
    """Rows of number tokens from a label file -> (rows, fields) float64; the errors name the
    line (``line_numbers[row]``) of the first bad token, else of the first NaN/inf row."""
    try:
        values = np.array(rows, dtype=np.float64)
    except ValueError:  # numpy does not say where: find the first bad token ourselves
        for tokens, line in zip(rows, line_numbers):
            for token in tokens:
                try:
                    float(token)
                except ValueError:
                    raise HandganError(f"{path}:{line}: {token!r} is not a number") from None
        raise  # unreachable: numpy and float() accept the same spellings
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise HandganError(f"{path}:{line_numbers[int(np.argmax(bad))]}: NaN or inf in the joint "
                           "values")
    return values


def png_header(data: bytes, path: Path, expected: str) -> tuple[int, int]:
    """(bit depth, colour type) from the IHDR, read by us: Pillow silently converts some modes."""
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise HandganError(f"{path}: not a PNG file (expected {expected})")
    check_frame_pixels(int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"),
                       path)
    return data[24], data[25]


def check_frame_pixels(width: int, height: int, path: Path) -> None:
    """A one-line error for a frame bigger than any depth camera's (before reading it)."""
    if width * height > MAX_FRAME_PIXELS:
        raise HandganError(f"{path}: a {width}x{height} image is too large for a depth frame "
                           f"(at most {MAX_FRAME_PIXELS:,} pixels)")


def decode_png(data: bytes, path: Path) -> np.ndarray:
    """Pixels of an in-memory PNG whose :func:`png_header` was read (which refuses frames too
    large to decode); truncated or corrupt files become a HandganError."""
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:  # BytesIO shares, not copies
            image.load()
            return np.asarray(image)
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error,
            Image.DecompressionBombError) as e:
        raise HandganError(f"{path}: truncated or corrupt PNG ({one_line(e)})") from None


class Reader:
    """What the dataset readers share: labels in memory (``_uvd``, ``_xyz``: (N, J, 3) float64 of
    the frames present, None when unlabelled), depth frames read on demand by ``_read(path)``,
    refused unless their size is the camera's, with the sensor's "no depth" code ``_no_depth`` (if
    any) read as 0."""

    intrinsics: Intrinsics
    default_cube_mm: float
    _no_depth: int | None = None
    _size_hint = ""  # the end of the wrong-size error

    def __len__(self) -> int:
        return len(self._uvd)

    def frame_path(self, i: int) -> Path:
        return self._paths[i]

    def joints_uvd(self) -> np.ndarray | None:
        """(N, J, 3) float64: u, v px and d mm."""
        return None if self._uvd is None else self._uvd.copy()

    def joints_xyz(self) -> np.ndarray | None:
        """(N, J, 3) float64: x, y, z mm in the dataset's convention (see the reader's module)."""
        return None if self._xyz is None else self._xyz.copy()

    def cube_mm(self, i: int) -> float:
        """Crop cube side (mm) for frame i."""
        return self.default_cube_mm

    def depth(self, i: int) -> np.ndarray:
        """(H, W) float32 depth mm of frame ``i`` (0 = no depth)."""
        path, intr = self.frame_path(i), self.intrinsics
        depth_mm = self._read(path)
        if depth_mm.shape != (intr.height, intr.width):
            raise HandganError(f"{path}: frame is {depth_mm.shape[1]}x{depth_mm.shape[0]}, "
                               f"expected {intr.width}x{intr.height}{self._size_hint}")
        if self._no_depth is not None:
            depth_mm[depth_mm == self._no_depth] = 0.0
        return depth_mm
