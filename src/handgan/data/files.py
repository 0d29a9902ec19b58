"""File-reading pieces every dataset reader shares: bytes, PNG headers and pixels, frame sizes.
Each turns a user's bad file into a one-line HandganError that names the file."""
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
    """The whole file as UTF-8 (a BOM dropped); :func:`read_bytes`'s errors, and "not a text
    file" for other bytes."""
    try:
        return read_bytes(path, what).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise HandganError(f"{path}: {what} is not a text file (not UTF-8/ASCII)") from None


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
    """Pixels of an in-memory PNG; truncated or corrupt files become a HandganError."""
    if data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR":
        check_frame_pixels(int.from_bytes(data[16:20], "big"),
                           int.from_bytes(data[20:24], "big"), path)
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:  # BytesIO shares, not copies
            image.load()
            return np.asarray(image)
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error,
            Image.DecompressionBombError) as e:
        raise HandganError(f"{path}: truncated or corrupt PNG ({one_line(e)})") from None


def check_frame_size(depth_mm: np.ndarray, intr: Intrinsics, path: Path, hint: str = "") -> np.ndarray:
    """The frame, if its size is the camera's; else a one-line error (with an optional hint)."""
    if depth_mm.shape != (intr.height, intr.width):
        raise HandganError(f"{path}: frame is {depth_mm.shape[1]}x{depth_mm.shape[0]}, expected "
                           f"{intr.width}x{intr.height}{hint}")
    return depth_mm
