"""KMS specifics of SDL (issue #16.1): which render driver presents the window, and whether frames
reach the screen.

Under `SDL_VIDEODRIVER=kmsdrm` the window has no framebuffer of its own: SDL draws pygame's surface
through a renderer, and SDL 2.32 (pygame-ce's wheels, x86_64 and aarch64 alike) tries `opengl`
first. On a board without desktop GL (no libGL.so.1: the normal case on Raspberry Pi OS Lite, whose
Mesa driver offers GLES) that renderer is created but draws nothing: the screen stays black while
the agent plays and its own screenshot looks right. GLES 2 is what the Pi's KMS driver (v3d/vc4)
offers, so on kmsdrm we ask for `opengles2` unless the user chose a renderer.

Whether frames reach the screen can be told from inside: the pixels the renderer presented are
read back (SDL_RenderReadPixels) and compared with pygame's surface. A renderer that draws nothing
reads back garbage. ctypes reaches the SDL library pygame itself loaded (found in /proc/self/maps).
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import MutableMapping
from typing import Any

import pygame

log = logging.getLogger(__name__)

GLES_RENDER_DRIVER = "opengles2"
_ARGB8888 = 0x16362004  # SDL_PIXELFORMAT_ARGB8888
_PROBE_POINTS = ((0.5, 0.5), (0.25, 0.75), (0.75, 0.2))
_TOLERANCE = 8


def prefer_gles(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Before pygame.display.init(): on kmsdrm, present with GLES 2 unless a renderer was chosen.

    Returns the render driver set, or None when nothing was changed."""
    env = os.environ if environ is None else environ
    if env.get("SDL_VIDEODRIVER", "").lower() != "kmsdrm":
        return None
    if env.get("SDL_RENDER_DRIVER") or env.get("SDL_FRAMEBUFFER_ACCELERATION"):
        return None  # the technician's (or the unit's) choice stands
    env["SDL_RENDER_DRIVER"] = GLES_RENDER_DRIVER
    return GLES_RENDER_DRIVER


class _RendererInfo(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("flags", ctypes.c_uint32), ("num_texture_formats", ctypes.c_uint32),
                ("texture_formats", ctypes.c_uint32 * 16), ("max_texture_width", ctypes.c_int),
                ("max_texture_height", ctypes.c_int)]


class _Rect(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("w", ctypes.c_int), ("h", ctypes.c_int)]


def _sdl() -> Any:
    """The SDL2 library pygame loaded (not another copy: state lives in the loaded instance)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            # The wheel's copy is e.g. pygame_ce.libs/libSDL2-2-0-<hash>.so.0.3200.10 (never libSDL2_ttf…).
            path = next((line.split()[-1] for line in maps if "/libSDL2-" in line or "/libSDL2.so" in line), None)
    except OSError:
        return None
    if path is None:
        return None
    try:
        sdl = ctypes.CDLL(path)
    except OSError:
        return None
    sdl.SDL_GetWindowFromID.restype = ctypes.c_void_p
    sdl.SDL_GetWindowFromID.argtypes = [ctypes.c_uint32]
    sdl.SDL_GetRenderer.restype = ctypes.c_void_p
    sdl.SDL_GetRenderer.argtypes = [ctypes.c_void_p]
    sdl.SDL_GetRendererInfo.argtypes = [ctypes.c_void_p, ctypes.POINTER(_RendererInfo)]
    sdl.SDL_RenderReadPixels.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Rect), ctypes.c_uint32, ctypes.c_void_p,
                                         ctypes.c_int]
    return sdl


def _window_renderer(sdl: Any) -> int | None:
    try:
        from pygame._sdl2.video import Window

        window_id = int(Window.from_display_module().id)
    except Exception:  # noqa: BLE001 — an older pygame-ce: the display module's window is the first
        window_id = 1
    window = sdl.SDL_GetWindowFromID(window_id)
    renderer = sdl.SDL_GetRenderer(window) if window else None
    return int(renderer) if renderer else None


def render_driver() -> str | None:
    """The SDL renderer presenting the display window (e.g. "opengles2"), or None when there is none
    (drivers with a framebuffer of their own: dummy, x11 without acceleration) or it cannot be told."""
    if not pygame.display.get_init() or pygame.display.get_surface() is None:
        return None
    sdl = _sdl()
    renderer = _window_renderer(sdl) if sdl is not None else None
    if renderer is None:
        return None
    info = _RendererInfo()
    if sdl.SDL_GetRendererInfo(ctypes.c_void_p(renderer), ctypes.byref(info)) != 0 or not info.name:
        return None
    return str(info.name.decode())


def presenting_problem() -> str | None:
    """After a frame is on screen (display thread): read the presented pixels back and compare them
    with pygame's surface. Returns a problem for `errors` when they differ, None when they match or
    when this display has no renderer to ask. Presents the same frame twice more (no visible change),
    so every buffer in the swap chain holds it."""
    surface = pygame.display.get_surface()
    sdl = _sdl() if surface is not None else None
    renderer = _window_renderer(sdl) if sdl is not None else None
    if surface is None or sdl is None or renderer is None:
        return None
    pygame.display.flip()
    pygame.display.flip()
    width, height = surface.get_size()
    pixel = (ctypes.c_uint8 * 4)()
    for fx, fy in _PROBE_POINTS:
        x, y = min(width - 1, int(width * fx)), min(height - 1, int(height * fy))
        if sdl.SDL_RenderReadPixels(ctypes.c_void_p(renderer), ctypes.byref(_Rect(x, y, 1, 1)), _ARGB8888, pixel, 4) != 0:
            return None  # this renderer cannot read back: nothing to conclude
        blue, green, red = pixel[0], pixel[1], pixel[2]
        expected = surface.get_at((x, y))
        if any(abs(a - b) > _TOLERANCE for a, b in ((red, expected.r), (green, expected.g), (blue, expected.b))):
            driver = render_driver() or "?"
            return (f"frames are not reaching the screen: SDL's {driver} renderer presented ({red}, {green}, {blue}) "
                    f"where the frame has ({expected.r}, {expected.g}, {expected.b}) at {x},{y}"
                    + (" (no desktop GL here: set SDL_RENDER_DRIVER=opengles2)" if driver == "opengl" else ""))
    return None
