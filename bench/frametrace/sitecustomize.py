"""Loaded by bench_slowdisk.py into the agent under test (any version): records when each frame is
presented (pygame.display.flip/update), kept in memory and written at exit. Not part of the agent."""

import atexit
import os
import time

_path = os.environ.get("BANGTIN_FRAME_TRACE")
if _path:
    import pygame

    _presents: list[float] = []

    def _traced(present):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            result = present(*args, **kwargs)
            _presents.append(time.monotonic())
            return result
        return wrapper

    pygame.display.flip = _traced(pygame.display.flip)
    pygame.display.update = _traced(pygame.display.update)

    @atexit.register
    def _dump() -> None:
        with open(_path, "w") as out:
            out.write("\n".join(f"{t:.6f}" for t in _presents))
