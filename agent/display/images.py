"""Image files: their pixel size read from the header before anything is decoded (PROTOCOL.md §10).

A 730 KB PNG can declare 16000×16000 pixels and cost 1.8 GB once decoded; reading the size first
costs a few hundred bytes. Formats pygame decodes that a board may be given: PNG, JPEG, GIF, BMP
and WebP. Anything else is refused before decoding.
"""

from __future__ import annotations

import struct
from pathlib import Path

from agent.limits import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE

HEADER_BYTES = 64 * 1024  # a JPEG's frame header may follow large EXIF/ICC segments
JPEG_FRAME_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageRefused(Exception):
    """Not an image the board will decode; str() says why (the item fails, the board plays on)."""


def image_size(head: bytes) -> tuple[str, int, int]:
    """(format, width, height) from the first bytes of a file, or ImageRefused."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise ImageRefused("cannot decode image: PNG without its IHDR header")
        width, height = struct.unpack(">II", head[16:24])
        return "PNG", width, height
    if head.startswith(b"\xff\xd8"):
        return ("JPEG", *_jpeg_size(head))
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        width, height = struct.unpack("<HH", head[6:10])
        return "GIF", width, height
    if head.startswith(b"BM") and len(head) >= 26:
        width, height = struct.unpack("<ii", head[18:26])
        return "BMP", abs(width), abs(height)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ("WebP", *_webp_size(head))
    raise ImageRefused("cannot decode image: not a PNG, JPEG, GIF, BMP or WebP file")


def _jpeg_size(head: bytes) -> tuple[int, int]:
    at = 2
    while at + 4 <= len(head):
        if head[at] != 0xFF:
            raise ImageRefused("cannot decode image: JPEG markers are damaged")
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            at += 2
            continue
        length = struct.unpack(">H", head[at + 2:at + 4])[0]
        if marker in JPEG_FRAME_MARKERS:
            if at + 9 > len(head):
                break
            height, width = struct.unpack(">HH", head[at + 5:at + 9])
            return width, height
        if length < 2:
            raise ImageRefused("cannot decode image: JPEG segment length is damaged")
        at += 2 + length
    raise ImageRefused(f"cannot decode image: no JPEG frame header in the first {HEADER_BYTES // 1024} KiB")


def _webp_size(head: bytes) -> tuple[int, int]:
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        width = 1 + int.from_bytes(head[24:27], "little")
        height = 1 + int.from_bytes(head[27:30], "little")
        return width, height
    if chunk == b"VP8 " and len(head) >= 30:
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise ImageRefused("cannot decode image: WebP header is damaged")


def check_image_file(path: str | Path) -> tuple[int, int]:
    """The file's pixel size if the board may decode it; ImageRefused naming the limit otherwise."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEADER_BYTES)
    except OSError as exc:
        raise ImageRefused(f"cannot read image: {exc.strerror or exc}") from None
    kind, width, height = image_size(head)
    if width <= 0 or height <= 0:
        raise ImageRefused(f"cannot decode image: {kind} says it has no pixels ({width}x{height})")
    if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
        raise ImageRefused(f"image is {width}x{height} pixels: over the limit of {MAX_IMAGE_SIDE} a side")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageRefused(f"image is {width}x{height} pixels ({width * height / 1e6:.1f} MP): "
                           f"over the limit of {MAX_IMAGE_PIXELS // 1_000_000} megapixels")
    return width, height
