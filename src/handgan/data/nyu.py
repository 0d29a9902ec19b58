"""Read and write the NYU hand dataset format, byte-compatible with the real dataset.

On disk a split is a folder (``train``, ``test``, ``test_1``, ...) holding

* ``joint_data.mat``: MATLAB 5 file with ``joint_names`` (1x36 cell of char) and ``joint_uvd`` /
  ``joint_xyz``, float64 arrays (views, frames, 36, 3). uvd = (u px, v px, d mm); xyz in mm, y up.
* ``depth_<view>_<frame>.png``: 640x480 8-bit RGB, depth mm = G * 256 + B (R unused, written 0).
  ``<frame>`` is 7 digits and 1-based: row k of the .mat is ``depth_1_{k+1:07d}.png``.

Real NYU has 3 views (Kinects); view 1 is the frontal one that everybody trains and tests on.
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import scipy.io
from PIL import Image

from handgan.atomic import atomic_write
from handgan.camera import NYU, Intrinsics
from handgan.data.files import (
    PNG_COLOR_TYPES,
    PNG_SIGNATURE,
    Reader,
    decode_png,
    one_line,
    png_header,
    read_bytes,
)
from handgan.errors import HandganError
from handgan.joints import NYU_EVAL_IDS, NYU_JOINT_NAMES
from handgan.preprocess import DEFAULT_CUBE_MM

JOINT_DATA_NAME = "joint_data.mat"
JOINT_SETS: dict[str, tuple[int, ...]] = {"eval14": NYU_EVAL_IDS, "all36": tuple(range(36))}
N_JOINTS = len(NYU_JOINT_NAMES)
DEFLATES = ("zlib", "isal")

# scipy stamps the creation time into the 116-byte text header; a fixed text (same standard
# "MATLAB 5.0 MAT-file" prefix) makes the same labels give the same bytes.
_MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: handgan".ljust(116, b" ")


def depth_png_name(frame_id: int, view: int = 1) -> str:
    """Depth PNG name for .mat row ``frame_id`` (0-based) of Kinect ``view`` (1-based)."""
    return f"depth_{view}_{frame_id + 1:07d}.png"


def encode_nyu_depth(depth_mm: np.ndarray) -> np.ndarray:
    """(H, W) whole mm in [0, 65535] -> (H, W, 3) uint8: R = 0, G = high byte, B = low byte."""
    depth_mm = np.asarray(depth_mm)
    if depth_mm.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth_mm.shape}")
    if depth_mm.dtype != np.uint16:
        kind = depth_mm.dtype.kind
        if kind not in "iuf":  # signed, unsigned, float
            raise ValueError(f"depth must be integer or float mm, got dtype {depth_mm.dtype}")
        if depth_mm.size and not np.all(np.isfinite(depth_mm)):
            raise ValueError("depth has NaN or inf values")
        if depth_mm.size and (depth_mm.min() < 0 or depth_mm.max() > 65535):
            raise ValueError(f"depth must be in [0, 65535] mm, got [{depth_mm.min()}, "
                             f"{depth_mm.max()}]")
        if kind == "f" and np.any(depth_mm != np.round(depth_mm)):
            raise ValueError("depth must be whole mm (the format stores integers); round it first")
        depth_mm = depth_mm.astype(np.uint16)
    # G, B = the high and low bytes of the depth, each written in one pass (a big-endian view
    # copied into rgb[..., 1:] is 6x slower: a full frame took 3 ms, a fifth of its synthesis)
    rgb = np.empty(depth_mm.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = 0
    np.right_shift(depth_mm, 8, out=rgb[..., 1], casting="unsafe")
    np.copyto(rgb[..., 2], depth_mm, casting="unsafe")  # uint16 -> uint8 keeps the low byte
    return rgb


def decode_nyu_depth(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) float32 depth mm = G * 256 + B (R ignored, as all readers do)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8, got shape {rgb.shape} dtype {rgb.dtype}")
    return rgb[..., 1].astype(np.float32) * 256.0 + rgb[..., 2]


def write_depth_png(path: str | Path, depth_mm: np.ndarray, compress_level: int = 1,
                    deflate: str = "zlib") -> None:
    """Write one NYU depth PNG atomically (a reader never sees a half-written file), encoded by
    :func:`encode_png_rgb`."""
    png = encode_png_rgb(encode_nyu_depth(depth_mm), compress_level, deflate)
    atomic_write(path, lambda f: f.write(png), durable=False)  # frames are cheap to regenerate


def encode_png_rgb(rgb: np.ndarray, compress_level: int = 1, deflate: str = "zlib") -> bytes:
    """(H, W, 3) uint8 -> PNG bytes: IHDR (8-bit RGB), one IDAT with every row "Up"-filtered, IEND.

    Assembled here from zlib output because that is twice as fast as Pillow's encoder, which
    tries five row filters per row: on hand frames "Up" with zlib's RLE strategy at level 1 takes
    ~2.9 ms and ~58 KB vs Pillow's ~5.5 ms and ~57 KB. Every PNG decoder (Pillow, OpenCV, MATLAB)
    reads the result. deflate: "zlib" (level 0-9, RLE strategy) or "isal" (ISA-L, level 0-3; its
    level 1 is 3-4x faster than zlib's on 640x480 depth frames and its files are about 10 %
    smaller on full synthetic frames, which use it). Both write the zlib stream PNG requires; the
    same image gives the same bytes with the same zlib or ISA-L build.
    """
    if deflate not in DEFLATES:
        raise ValueError(f"deflate must be one of {DEFLATES}, got {deflate!r}")
    height, width, _ = rgb.shape
    rows = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(height, 3 * width)
    filtered = np.empty((height, 1 + 3 * width), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type Up: each byte minus the byte above (mod 256)
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    if deflate == "isal":
        from isal import isal_zlib

        idat = isal_zlib.compress(filtered, compress_level)
    else:
        compressor = zlib.compressobj(compress_level, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
        idat = compressor.compress(filtered) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, colour type 2 (RGB)
    chunks = (_png_chunk(b"IHDR", header), _png_chunk(b"IDAT", idat), _png_chunk(b"IEND", b""))
    return PNG_SIGNATURE + b"".join(chunks)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + payload))
    return struct.pack(">I", len(payload)) + kind + payload + crc


def read_depth_png(path: str | Path) -> np.ndarray:
    """Read one NYU depth PNG -> (H, W) float32 mm (0 = no depth). Bad files raise HandganError."""
    path = Path(path)
    data = read_bytes(path, "depth PNG")
    # Check the header ourselves: Pillow opens 16-bit RGB as mode 'RGB' too, silently dropping bits.
    bit_depth, color_type = png_header(data, path, "an NYU 8-bit RGB depth PNG")
    if color_type != 2 or bit_depth != 8:
        found = _png_mode(data) if color_type != 2 else f"{bit_depth}-bit RGB"
        raise HandganError(f"{path}: not an NYU depth PNG (expected 8-bit RGB, got {found})")
    return decode_nyu_depth(decode_png(data, path))


def _png_mode(data: bytes) -> str:
    """"mode 'L'" as Pillow names it, else the PNG colour type from the header."""
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            return f"mode {image.mode!r}"
    except Exception:  # the file is rejected anyway; the mode is only a hint
        color_type = data[25]
        return f"{data[24]}-bit {PNG_COLOR_TYPES.get(color_type, f'color type {color_type}')}"


def write_joint_data(path: str | Path, joint_uvd: np.ndarray, joint_xyz: np.ndarray) -> None:
    """Write ``joint_data.mat`` atomically from (frames, 36, 3) (one view) or (views, frames, 36, 3)
    arrays, stored as float64 like the real files."""
    joint_uvd = np.asarray(joint_uvd, dtype=np.float64)
    joint_xyz = np.asarray(joint_xyz, dtype=np.float64)
    if joint_uvd.shape != joint_xyz.shape:
        raise ValueError(f"joint_uvd {joint_uvd.shape} and joint_xyz {joint_xyz.shape} differ")
    if joint_uvd.ndim == 3:
        joint_uvd, joint_xyz = joint_uvd[None], joint_xyz[None]  # one view: (1, frames, 36, 3)
    if joint_uvd.ndim != 4 or joint_uvd.shape[2:] != (N_JOINTS, 3):
        raise ValueError(f"expected (frames, 36, 3) or (views, frames, 36, 3): {joint_uvd.shape}")
    if not (np.all(np.isfinite(joint_uvd)) and np.all(np.isfinite(joint_xyz))):
        raise ValueError("joint arrays have NaN or inf values")
    names = np.empty((1, N_JOINTS), dtype=object)  # a 1x36 object array is saved as a cell array
    names[0, :] = NYU_JOINT_NAMES
    variables = {"joint_names": names, "joint_uvd": joint_uvd, "joint_xyz": joint_xyz}

    def write(f: BinaryIO) -> None:
        scipy.io.savemat(f, variables, format="5", do_compression=False)
        f.seek(0)
        f.write(_MAT_HEADER)

    atomic_write(path, write)


def read_joint_data(path: str | Path, view: int = 1) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read ``joint_data.mat`` for Kinect ``view`` (1-based) -> (names, uvd, xyz), each array
    float64 (frames, 36, 3). xyz is returned as stored, not recomputed from uvd, like
    DeepPrior++. A file without ``joint_names`` gets the standard NYU names."""
    path = Path(path)
    if not path.is_file():
        raise HandganError(f"{path}: joint_data.mat not found")
    try:
        mat = scipy.io.loadmat(path)
    except NotImplementedError:  # scipy's answer to v7.3 files, which are HDF5 inside
        raise HandganError(f"{path}: MATLAB v7.3 (HDF5) .mat files are not supported; re-save it "
                           "with -v7") from None
    except Exception as e:  # scipy raises many types for garbage input; all mean "unreadable"
        raise HandganError(f"{path}: not a readable MATLAB 5 .mat file ({one_line(e)})") from None

    missing = [k for k in ("joint_uvd", "joint_xyz") if k not in mat]
    if missing:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise HandganError(f"{path}: missing variable(s) {missing}; found {found}")
    names = list(NYU_JOINT_NAMES)
    if "joint_names" in mat:
        # A cell gives an object array of 1-element char arrays; a char matrix an array of str.
        names = [str(np.squeeze(n)) for n in np.asarray(mat["joint_names"]).ravel()]
        if len(names) != N_JOINTS:
            raise HandganError(f"{path}: joint_names has {len(names)} names, expected {N_JOINTS}")
    arrays = [_checked_joint_array(path, mat, key) for key in ("joint_uvd", "joint_xyz")]
    if arrays[0].shape != arrays[1].shape:
        raise HandganError(f"{path}: joint_uvd has shape {arrays[0].shape} but joint_xyz has "
                           f"{arrays[1].shape}")
    n_views = arrays[0].shape[0]
    if not 1 <= view <= n_views:
        raise HandganError(f"{path}: view {view} out of range (the file has {n_views} view(s))")
    uvd, xyz = (np.ascontiguousarray(a[view - 1]) for a in arrays)
    for key, a in (("joint_uvd", uvd), ("joint_xyz", xyz)):
        bad = ~np.isfinite(a)
        if bad.any():
            frame, joint, _ = np.argwhere(bad)[0]
            raise HandganError(f"{path}: {key} view {view} has {int(bad.any(-1).sum())} NaN/inf "
                               f"joint(s), first at frame row {frame} joint {joint}")
    return names, uvd, xyz


def _checked_joint_array(path: Path, mat: dict, key: str) -> np.ndarray:
    """The (views, frames, 36, 3) float64 array ``key``; a 3-D array counts as one view."""
    a = mat[key]
    if not (np.issubdtype(a.dtype, np.number) and not np.iscomplexobj(a)):
        raise HandganError(f"{path}: {key} is not a real numeric array (dtype {a.dtype})")
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[2:] != (N_JOINTS, 3):
        raise HandganError(f"{path}: {key} has shape {mat[key].shape}, expected (views, frames, "
                           f"{N_JOINTS}, 3)")
    return a.astype(np.float64, copy=False)


def list_splits(root: str | Path) -> list[str]:
    """Names of the split folders under ``root`` that hold a joint_data.mat, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise HandganError(f"{root}: NYU dataset folder not found")
    return sorted(p.name for p in root.iterdir() if (p / JOINT_DATA_NAME).is_file())


class NYUSplit(Reader):
    """One split folder of an NYU-format dataset: labels in memory, depth frames read on demand.

    Like DeepPrior++, .mat rows without a depth PNG are skipped, so ``len`` counts the frames
    present and index ``i`` is .mat row ``frame_ids[i]``. ``view`` picks both the label view and
    the ``depth_<view>_*`` files. ``joints`` is a key of ``JOINT_SETS`` ("eval14" or "all36").
    """

    intrinsics: Intrinsics = NYU
    _read = staticmethod(read_depth_png)

    def __init__(self, root: str | Path, split: str = "train", view: int = 1,
                 joints: str = "eval14") -> None:
        if joints not in JOINT_SETS:
            raise HandganError(f"unknown NYU joint set {joints!r} (expected {list(JOINT_SETS)})")
        self.root, self.split, self.view, self.joint_set = Path(root), split, view, joints
        self.folder = self.root / split
        if not self.folder.is_dir():
            hint = f"; splits found: {list_splits(self.root)}" if self.root.is_dir() else ""
            raise HandganError(f"{self.folder}: NYU split folder not found{hint}")
        mat_path = self.folder / JOINT_DATA_NAME
        if not mat_path.is_file():
            raise HandganError(f"{mat_path}: joint_data.mat not found in the split folder")
        names, uvd, xyz = read_joint_data(mat_path, view)

        present = set(os.listdir(self.folder))  # one listing instead of 72k stat calls on train
        self.frame_ids = np.array(
            [k for k in range(len(uvd)) if depth_png_name(k, view) in present], dtype=np.int64
        )
        if len(self.frame_ids) == 0:
            raise HandganError(f"{self.folder}: none of the {len(uvd)} depth_{view}_*.png frames "
                               f"listed in {JOINT_DATA_NAME} is present")
        ids = list(JOINT_SETS[joints])
        self.joint_ids: tuple[int, ...] = tuple(ids)
        self.joint_names: tuple[str, ...] = tuple(names[j] for j in ids)
        self._uvd = uvd[self.frame_ids][:, ids]  # (N, J, 3) px, px, mm
        self._xyz = xyz[self.frame_ids][:, ids]  # (N, J, 3) mm, y up
        # DeepPrior++ crops around the palm centre (NYU id 32) with a 300 mm cube; its second test
        # subject (test_2, frames 2441-8252 of the official test set) uses 250 mm.
        self.centre_joint: int = self.joint_ids.index(32)
        self.default_cube_mm: float = 250.0 if split == "test_2" else DEFAULT_CUBE_MM

    def __repr__(self) -> str:
        return (f"NYUSplit({str(self.folder)!r}, view={self.view}, joints={self.joint_set!r}, "
                f"n={len(self)})")

    def frame_path(self, i: int) -> Path:
        return self.folder / depth_png_name(int(self.frame_ids[i]), self.view)
