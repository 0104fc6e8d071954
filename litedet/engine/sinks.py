"""Where detection results go, written as they come so a kill loses nothing finished.

* ``ResultsLog``: JSON Lines, one object per frame, each line handed to the OS as it is written
  (a SIGKILL keeps every line written; only a power cut can lose the page cache).
* ``MJPEGAVIWriter``: annotated video as Motion-JPEG in AVI, each frame written straight to the
  file (no muxer buffer), so a file cut short by a kill still plays up to its last whole frame.
  The index and frame counts are written on ``close()``; readers (FFmpeg, OpenCV, VLC) play a
  file without them by scanning. A new segment ``<stem>_001.avi`` starts before 1 GiB (the AVI
  1.0 limit that every player reads).
* ``OutputWriter``: annotated images keep their names; each video or stream gets one AVI.

Every write error (a full disk, a removed folder) becomes one ``OutputError`` naming the path;
whatever was written before it stays readable.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import cv2
import numpy as np

from litedet.data.sources import Frame

# Start a new segment before this many bytes: AVI 1.0 offsets (idx1) are 32-bit and many
# players stop at 1 GiB without the OpenDML extension.
SEGMENT_BYTES = 1 << 30
JPEG_QUALITY = 90


class OutputError(ValueError):
    """Writing a result file failed (disk full, folder gone, permission); names the path."""


def _output_error(path: Path, err: OSError, kept: str) -> OutputError:
    reason = "no space left on device" if err.errno == errno.ENOSPC else (err.strerror or str(err))
    return OutputError(f"cannot write {path}: {reason}; {kept}")


class ResultsLog:
    """JSON Lines results file: ``write(obj)`` appends one line and hands it to the OS at once."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.lines = 0
        try:
            self._file: TextIO | None = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        except OSError as err:
            raise _output_error(self.path, err, "nothing was written") from None

    def write(self, result: dict[str, Any]) -> None:
        assert self._file is not None, "ResultsLog is closed"
        try:
            self._file.write(json.dumps(result, separators=(",", ":")) + "\n")
            self._file.flush()
        except OSError as err:
            raise _output_error(self.path, err, f"the {self.lines} line(s) before are kept") from None
        self.lines += 1

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:  # the error was reported by write(); closing must not raise again
                pass
            self._file = None


class MJPEGAVIWriter:
    """Motion-JPEG AVI written frame by frame with plain ``os.write`` calls (see module doc).

    ``path`` is the first segment; later ones are ``<stem>_001.avi``, ... (``paths`` lists them).
    Frames are BGR uint8 of one size; a frame of another size is resized to the first.
    """

    def __init__(self, path: str | os.PathLike, fps: float, quality: int = JPEG_QUALITY, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.path = Path(path)
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self.quality = int(quality)
        self.segment_bytes = int(segment_bytes)
        self.paths: list[Path] = []
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (width, height)
        self._file: BinaryIO | None = None
        self._current: Path | None = None
        # the segment's idx1 entries, 16 bytes per frame (a list of tuples would hold ~120 per frame)
        self._index = bytearray()
        self._written = 0
        self._movi_at = 0

    # --- AVI layout (Microsoft AVI RIFF reference: avih/strh/strf/idx1)
    def _header(self, width: int, height: int, frames: int) -> bytes:
        usec = int(round(1e6 / self.fps))
        scale, rate = 1000, int(round(self.fps * 1000))
        avih = struct.pack("<14I", usec, 0, 0, 0x10, frames, 0, 1, 0, width, height, 0, 0, 0, 0)
        strh = struct.pack("<4s4sIHHIIIIIIII4h", b"vids", b"MJPG", 0, 0, 0, 0, scale, rate, 0, frames, 0, 0xFFFFFFFF, 0,
                           0, 0, width, height)
        strf = struct.pack("<IiiHH4sIiiII", 40, width, height, 1, 24, b"MJPG", width * height * 3, 0, 0, 0, 0)
        strl = b"strl" + _chunk(b"strh", strh) + _chunk(b"strf", strf)
        hdrl = b"hdrl" + _chunk(b"avih", avih) + _chunk(b"LIST", strl)
        return _chunk(b"LIST", hdrl)

    def _open_segment(self) -> None:
        assert self.size is not None
        number = len(self.paths)
        path = self.path if number == 0 else self.path.with_name(f"{self.path.stem}_{number:03d}{self.path.suffix}")
        try:
            self._file = open(path, "wb", buffering=0)  # noqa: SIM115 - closed in _close_segment
        except OSError as err:
            raise _output_error(path, err, "the segments before are kept") from None
        self._current = path
        self.paths.append(path)
        header = self._header(*self.size, 0)
        # RIFF and movi sizes are 0 until close(): readers then read to the end of the file.
        start = b"RIFF" + struct.pack("<I", 0) + b"AVI " + header + b"LIST" + struct.pack("<I", 0) + b"movi"
        self._write(start)
        self._movi_at = len(start) - 4  # offsets in idx1 count from the 'movi' fourcc
        self._index = bytearray()

    def _write(self, data: bytes) -> None:
        assert self._file is not None and self._current is not None
        try:
            view = memoryview(data)
            while view:
                written = self._file.write(view)
                view = view[written:]
        except OSError as err:
            raise _output_error(self._current, err, f"{self.frames} frame(s) written before are kept and play") from None
        self._written += len(data)

    def write(self, image: np.ndarray) -> None:
        """Append one BGR frame."""
        height, width = image.shape[:2]
        if self.size is None:
            self.size = (int(width), int(height))
        elif (width, height) != self.size:
            image = cv2.resize(image, self.size)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise OutputError(f"cannot encode a frame for {self.path}")
        data = jpeg.tobytes()
        if self._file is None or (self._written + len(data) + 8 + len(self._index) + 16 > self.segment_bytes and self._index):
            self._close_segment()
            self._written = 0
            self._open_segment()
        offset = self._written - self._movi_at
        self._write(_chunk(b"00dc", data))
        # AVIIF_KEYFRAME (0x10): every JPEG stands alone
        self._index += struct.pack("<4sIII", b"00dc", 0x10, offset, len(data))
        self.frames += 1

    def _close_segment(self) -> None:
        if self._file is None:
            return
        file, self._file = self._file, None
        try:
            # idx1, then the sizes and frame counts
            index = _chunk(b"idx1", bytes(self._index))
            movi_end = file.seek(0, os.SEEK_END)
            file.write(index)
            header = self._header(*self.size, len(self._index) // 16)  # type: ignore[misc]
            for position, value in ((4, movi_end + len(index) - 8), (self._movi_at - 4, movi_end - self._movi_at)):
                file.seek(position)
                file.write(struct.pack("<I", value))
            file.seek(12)
            file.write(header)
        except OSError:
            pass  # the frames are in the file; without the index it still plays by scanning
        finally:
            file.close()

    def close(self) -> None:
        self._close_segment()


def _chunk(fourcc: bytes, data: bytes) -> bytes:
    """A RIFF chunk: id, little-endian size, data, a pad byte to an even length."""
    return fourcc + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")


class OutputWriter:
    """Annotated outputs under ``save_dir``: one image per image file (same name), one
    ``<name>.avi`` (Motion-JPEG, see ``MJPEGAVIWriter``) per video or stream."""

    def __init__(self, save_dir: str | os.PathLike, fps: float) -> None:
        self.save_dir = Path(save_dir)
        self.fps = fps
        self.videos: dict[str, MJPEGAVIWriter] = {}
        self._images: list[Path] = []
        self._used: set[str] = set()

    @property
    def saved(self) -> list[Path]:
        """Files written so far, images and video segments."""
        return self._images + [path for writer in self.videos.values() for path in writer.paths]

    def _unique(self, name: str) -> Path:
        path = self.save_dir / name
        stem, suffix, n = path.stem, path.suffix, 1
        while path.name in self._used:
            path = self.save_dir / f"{stem}_{n}{suffix}"
            n += 1
        self._used.add(path.name)
        return path

    def write(self, frame: Frame, annotated: np.ndarray) -> None:
        if not frame.is_video:
            path = self._unique(Path(frame.stream).name or "image.jpg")
            ok, data = cv2.imencode(path.suffix or ".jpg", annotated)
            if not ok:
                raise OutputError(f"cannot encode {path} (suffix {path.suffix!r})")
            try:
                with open(path, "wb") as file:
                    file.write(data.tobytes())
            except OSError as err:
                raise _output_error(path, err, f"the {len(self._images)} file(s) written before are kept") from None
            self._images.append(path)
            return
        writer = self.videos.get(frame.stream)
        if writer is None:
            stem = Path(frame.stream.split("?")[0].rstrip("/")).stem or "stream"
            writer = self.videos[frame.stream] = MJPEGAVIWriter(self._unique(f"{stem}.avi"), self.fps)
        writer.write(annotated)

    def close(self) -> None:
        for writer in self.videos.values():
            writer.close()
