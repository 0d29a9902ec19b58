"""Videos of frame sequences: an animated GIF (Pillow, always there) or an mp4 (H.264 with the
ffmpeg that the ``imageio-ffmpeg`` package ships: ``pip install 'handgan[video]'``).

    with open_video("pred/sequence.mp4", fps=15) as video:
        for rgb in pictures:          # (H, W, 3) uint8, all the same size
            video.add(rgb)

The file appears only when the writer is closed without an error (written to a temporary name
beside it, then renamed), so an interrupted run never leaves half a video under the real name.
An mp4 streams its frames to ffmpeg; a GIF keeps them in memory as 256-colour pictures (about
0.25 MB a frame at the overlay's 720 x 342 px) until it is written: use mp4 for long sequences.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from handgan.errors import HandganError

VIDEO_SUFFIXES = (".gif", ".mp4")
MP4_MISSING = "mp4 videos need imageio-ffmpeg: pip install 'handgan[video]' (or write a .gif)"


def check_video_path(path: str | os.PathLike) -> Path:
    """``path`` if it names a video this module writes (and mp4 can be written here)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise HandganError(f"{path}: the video must be a .gif or an .mp4 file")
    if suffix == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise HandganError(f"{path}: {MP4_MISSING}") from None
    return path


def open_video(path: str | os.PathLike, fps: float) -> GifWriter | Mp4Writer:
    """A writer for ``path`` (.gif or .mp4) at ``fps`` frames per second; its folder is made
    if missing."""
    path = check_video_path(path)
    if not (0 < fps <= 120):
        raise HandganError(f"video frame rate must be > 0 and <= 120 fps, got {fps}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HandganError(f"{path}: cannot make its folder ({e.strerror or e})") from None
    return Mp4Writer(path, fps) if path.suffix.lower() == ".mp4" else GifWriter(path, fps)


class _Writer:
    """What both writers share: the paths, the frame count and the ``with`` protocol."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps, self.frames = path, float(fps), 0
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close(commit=kind is None)  # each writer defines close()


class GifWriter(_Writer):
    """Animated GIF, looping, one picture per frame."""

    def __init__(self, path: Path, fps: float) -> None:
        super().__init__(path, fps)
        self._pictures: list = []

    def add(self, rgb: np.ndarray) -> None:
        from PIL import Image

        # An adaptive 256-colour palette per frame: the depth colour map and the skeleton
        # colours survive, at a quarter of the RGB memory.
        image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB")
        self._pictures.append(image.quantize(256, method=Image.Quantize.MEDIANCUT))
        self.frames += 1

    def close(self, commit: bool = True) -> Path | None:
        pictures, self._pictures = self._pictures, []
        if not commit or not pictures:
            return None
        from handgan.atomic import atomic_write

        duration_ms = max(20, round(1000.0 / self.fps))  # GIF delays are whole 1/100 s
        atomic_write(self.path, lambda f: pictures[0].save(
            f, format="GIF", save_all=True, append_images=pictures[1:], duration=duration_ms,
            loop=0, optimize=False), durable=False)
        return self.path


class Mp4Writer(_Writer):
    """H.264 mp4 (yuv420p, playable everywhere) through imageio-ffmpeg's ffmpeg."""

    def __init__(self, path: Path, fps: float) -> None:
        super().__init__(path, fps)
        self._gen = None
        self._size: tuple[int, int] | None = None

    def add(self, rgb: np.ndarray) -> None:
        import imageio_ffmpeg

        rgb = np.asarray(rgb, dtype=np.uint8)
        h, w = rgb.shape[:2]
        if self._gen is None:
            # yuv420p needs even sides: pad by one black row / column where odd.
            self._size = (w + w % 2, h + h % 2)
            self._gen = imageio_ffmpeg.write_frames(
                str(self.tmp), self._size, fps=self.fps, codec="libx264", quality=7,
                macro_block_size=1, ffmpeg_log_level="error", output_params=["-f", "mp4"])
            self._gen.send(None)  # start ffmpeg
        width, height = self._size
        if (w + w % 2, h + h % 2) != self._size:
            raise ValueError(f"video frames must all be {width}x{height}, got {w}x{h}")
        if (w, h) != self._size:
            rgb = np.pad(rgb, ((0, height - h), (0, width - w), (0, 0)))
        self._gen.send(np.ascontiguousarray(rgb))
        self.frames += 1

    def close(self, commit: bool = True) -> Path | None:
        gen, self._gen = self._gen, None
        if gen is None:
            return None
        try:
            gen.close()  # flushes and waits for ffmpeg
            if commit:
                os.replace(self.tmp, self.path)
                return self.path
            return None
        finally:
            self.tmp.unlink(missing_ok=True)
