"""A video's picture size read from its MP4 (ISO BMFF) boxes, before FFmpeg opens it (PROTOCOL.md §10).

FFmpeg's probing decodes frames to learn a stream's parameters: for an 8192×8192 H.264 file that
alone costs hundreds of megabytes. The boxes say the size in a few hundred bytes: each track's
`tkhd` (presentation size) and its `stsd` sample entry (coded size). Only box headers are read while
walking, so a hostile file cannot make this read much either.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from agent.display.video import VideoError
from agent.limits import MAX_VIDEO_SIZE

CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}
VISUAL_ENTRIES = {b"avc1", b"avc3", b"hvc1", b"hev1", b"dvh1", b"dvhe", b"mp4v", b"vp08", b"vp09", b"av01", b"encv",
                  b"jpeg", b"mjp2", b"s263", b"h263"}
MAX_DEPTH = 8
MAX_BOXES = 10_000


def _boxes(handle: BinaryIO, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the boxes between `start` and `end`."""
    found: list[tuple[bytes, int, int]] = []
    at = start
    while at + 8 <= end and len(found) < MAX_BOXES:
        handle.seek(at)
        header = handle.read(16)
        if len(header) < 8:
            break
        size, kind = struct.unpack(">I4s", header[:8])
        payload = at + 8
        if size == 1 and len(header) == 16:
            size = struct.unpack(">Q", header[8:16])[0]
            payload = at + 16
        elif size == 0:
            size = end - at
        if size < payload - at:
            raise VideoError("cannot read the video's size: its MP4 boxes are damaged")
        found.append((kind, payload, min(at + size, end)))
        at += size
    return found


def _sizes(handle: BinaryIO, start: int, end: int, depth: int = 0) -> list[tuple[int, int]]:
    sizes: list[tuple[int, int]] = []
    for kind, payload, box_end in _boxes(handle, start, end):
        if kind in CONTAINERS and depth < MAX_DEPTH:
            sizes.extend(_sizes(handle, payload, box_end, depth + 1))
        elif kind == b"tkhd":
            handle.seek(payload)
            version = handle.read(1)
            handle.seek(payload + (88 if version == b"\x01" else 76))  # width, height: the last two 16.16 fields
            data = handle.read(8)
            if len(data) == 8:
                width, height = struct.unpack(">II", data)
                sizes.append((width >> 16, height >> 16))
        elif kind == b"stsd":
            # After version, flags and the entry count, a sample entry: its box header, 6 reserved bytes, a
            # 2-byte index, and for a picture 16 pre-defined bytes, then width and height.
            handle.seek(payload + 8)
            entry = handle.read(8 + 8 + 16 + 4)
            if len(entry) == 36 and entry[4:8] in VISUAL_ENTRIES:
                sizes.append(struct.unpack(">HH", entry[32:36]))
    return sizes


def mp4_picture_size(path: str | Path) -> tuple[int, int]:
    """The largest picture any track of the file declares; VideoError when it cannot be told."""
    file_size = Path(path).stat().st_size
    with open(path, "rb") as handle:
        top = _boxes(handle, 0, file_size)
        if not any(kind in (b"ftyp", b"moov") for kind, _, _ in top):
            raise VideoError("cannot read the video's size: not an MP4 file (no ftyp or moov box)")
        sizes = [size for kind, payload, end in top if kind == b"moov" for size in _sizes(handle, payload, end)]
    if not sizes:
        raise VideoError("cannot read the video's size: the MP4 has no track with a picture size")
    return max(width for width, _ in sizes), max(height for _, height in sizes)


def check_video_file(path: str | Path) -> tuple[int, int]:
    """The picture size if the board may play the file; VideoError naming the limit otherwise."""
    try:
        width, height = mp4_picture_size(path)
    except OSError as exc:
        raise VideoError(f"cannot read video: {exc.strerror or exc}") from None
    if width > MAX_VIDEO_SIZE[0] or height > MAX_VIDEO_SIZE[1]:
        raise VideoError(f"video is {width}x{height} pixels: over the limit of {MAX_VIDEO_SIZE[0]}x{MAX_VIDEO_SIZE[1]}")
    return width, height
