"""MP4 files made in the tests with PyAV: known colours per second, so screenshots can be checked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import av


def make_mp4(path: Path, colours: Sequence[tuple[int, int, int]], *, seconds_each: float = 1.0, fps: int = 10,
             size: tuple[int, int] = (160, 90)) -> Path:
    """H.264 in MP4: each colour fills the picture for `seconds_each`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        n = 0
        for colour in colours:
            for _ in range(round(seconds_each * fps)):
                frame = av.VideoFrame(size[0], size[1], "rgb24")
                frame.planes[0].update(bytes(colour) * (size[0] * size[1]))
                frame.pts = n
                n += 1
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
