"""`bangtin-agent demo`: a sample Vietnamese bulletin played through the real agent.

No server and no config needed: it writes a content folder (images drawn here, a text notice, a
short video encoded here, a high-priority warning whose `when` window opens for a minute at :00,
:10, :20 … of each hour, ticker lines, a logo), signs
its manifest with a demo key of its own, writes a config next to it and runs the agent with the
`file://` source. Everything a board does happens for real, so `ctl` works against it too.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.config import ConfigError, load_config
from agent.envelope import MANIFEST_PAYLOAD_TYPE, sign_envelope

DEMO_DEVICE = "demo-board"


def default_directory() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "bangtin-agent" / "demo"


def display_available() -> str | None:
    """None when SDL can open something; else a sentence telling the user what to do."""
    if os.environ.get("SDL_VIDEODRIVER") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return ("bangtin-agent demo: no display found (neither DISPLAY nor WAYLAND_DISPLAY is set).\n"
            "  On a desktop, run it from a terminal inside the desktop session.\n"
            "  On a board's console without a desktop: SDL_VIDEODRIVER=kmsdrm bangtin-agent demo --fullscreen\n"
            "  Headless (CI, SSH): SDL_VIDEODRIVER=dummy bangtin-agent demo  — then use `ctl screenshot`.")


def _draw_images(folder: Path) -> None:
    """Posters drawn with pygame, saved as PNG and JPEG: real files through the real decoders."""
    import pygame

    from agent.display.text import FontBook, fit_block

    pygame.font.init()
    fonts = FontBook()
    navy, yellow, white, red = (11, 61, 145), (255, 210, 0), (255, 255, 255), (200, 16, 46)

    logo = pygame.Surface((256, 256), pygame.SRCALPHA)
    pygame.draw.circle(logo, red, (128, 128), 126)
    star = [(128 + 100 * _cos(a), 128 - 100 * _sin(a)) for a in range(90, 90 + 720, 144)]
    pygame.draw.polygon(logo, yellow, star)
    pygame.image.save(logo, str(folder / "media" / "logo.png"))

    poster = pygame.Surface((1600, 900))
    poster.fill(white)
    poster.fill(navy, (0, 0, 1600, 170))
    title = fit_block(fonts, "LỊCH TIÊM CHỦNG MỞ RỘNG THÁNG 12/2026", (1500, 130), white, bold=True, max_size=70, align="center")
    poster.blit(title, title.get_rect(center=(800, 85)))
    rows = [("Ngày", "Đối tượng", "Địa điểm"), ("Thứ Hai 07/12", "Trẻ dưới 1 tuổi", "Trạm y tế xã"),
            ("Thứ Tư 09/12", "Trẻ 18 tháng", "Trạm y tế xã"), ("Thứ Sáu 11/12", "Phụ nữ mang thai", "Ấp Vĩnh Hòa")]
    font = fonts.get(44)
    for r, row in enumerate(rows):
        y = 210 + r * 150
        poster.fill((232, 238, 250) if r % 2 else (255, 255, 255), (60, y, 1480, 140))
        for c, cell in enumerate(row):
            text = fonts.get(46, bold=r == 0).render(cell, True, navy if r == 0 else (30, 30, 30))
            poster.blit(text, (90 + c * 500, y + (140 - text.get_height()) // 2))
    note = font.render("Mang theo sổ tiêm chủng. Liên hệ: Trạm y tế xã Vĩnh Thuận.", True, red)
    poster.blit(note, note.get_rect(center=(800, 860)))
    pygame.image.save(poster, str(folder / "media" / "lich-tiem-chung.png"))

    photo = pygame.Surface((1920, 1080))
    for y in range(1080):  # a sky-to-rice-field gradient: JPEG's kind of picture
        t = y / 1079
        colour = (int(40 + 80 * t), int(120 + 100 * t), int(200 - 150 * t)) if t < 0.55 else (60, int(150 + 60 * t), 40)
        pygame.draw.line(photo, colour, (0, y), (1919, y))
    banner = fit_block(fonts, "Ngày hội Đại đoàn kết toàn dân tộc — xã Vĩnh Thuận, 18/11/2026", (1700, 260), white,
                       bold=True, max_size=90, align="center")
    shade = pygame.Surface((1800, banner.get_height() + 60), pygame.SRCALPHA)
    shade.fill((0, 0, 0, 120))
    photo.blit(shade, shade.get_rect(center=(960, 540)))
    photo.blit(banner, banner.get_rect(center=(960, 540)))
    pygame.image.save(photo, str(folder / "media" / "dai-doan-ket.jpg"))


def _make_video(folder: Path, seconds: float = 6.0, fps: int = 25, size: tuple[int, int] = (640, 360)) -> None:
    """A few seconds of H.264 in MP4, encoded here with PyAV (the decoder the board plays it with):
    a headline sliding over a moving sky, so it is plainly a video and not a slide."""
    import av
    import pygame

    from agent.display.text import FontBook, fit_block

    pygame.font.init()
    width, height = size
    headline = fit_block(FontBook(), "Phòng chống thiên tai — Chủ động ứng phó mùa mưa bão", (width - 40, height // 3),
                         (255, 255, 255), bold=True, max_size=44, align="center")
    frame_surface = pygame.Surface(size)
    with av.open(str(folder / "media" / "phong-chong-thien-tai.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "28"}
        count = round(seconds * fps)
        for n in range(count):
            t = n / count
            for y in range(0, height, 8):  # bands of colour that drift: cheap to draw, easy to compress
                shade = (y / height + t) % 1.0
                frame_surface.fill((20 + int(60 * shade), 80 + int(80 * shade), 160 + int(60 * shade)), (0, y, width, 8))
            x = round(width - (width + headline.get_width()) * t * 1.2) + headline.get_width() // 2
            frame_surface.blit(headline, headline.get_rect(center=(max(width // 2, x), height // 2)))
            frame = av.VideoFrame(width, height, "rgb24")
            frame.planes[0].update(pygame.image.tobytes(frame_surface, "RGB"))
            frame.pts = n
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _cos(degrees: float) -> float:
    return math.cos(math.radians(degrees))


def _sin(degrees: float) -> float:
    return math.sin(math.radians(degrees))


def _media_entry(folder: Path, media_id: str, name: str, mime: str) -> dict[str, Any]:
    data = (folder / "media" / name).read_bytes()
    return {"id": media_id, "url": f"media/{name}", "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data), "type": mime}


def build_manifest(folder: Path, serial: int) -> dict[str, Any]:
    # Every ten minutes the warning takes the screen for one minute, showing what "high" does.
    warning_windows = [[f"{h:02d}:{m:02d}", f"{h:02d}:{m + 1:02d}"] for h in range(24) for m in range(0, 60, 10)]
    return {
        "schema": "bangtin.manifest/1",
        "serial": serial,
        "issued_at": dt.datetime.now(dt.UTC).astimezone().isoformat(timespec="seconds"),
        "audience": [DEMO_DEVICE],
        "timezone": "Asia/Ho_Chi_Minh",
        "layout": {
            "header": {"title": "ỦY BAN NHÂN DÂN XÃ VĨNH THUẬN", "logo": "m-logo", "clock": True},
            "ticker": {"speed_px_s": 110},
            "theme": {"background": "#0B3D91", "foreground": "#FFFFFF", "accent": "#FFD200"},
            "rotation": 0,
        },
        "media": [
            _media_entry(folder, "m-logo", "logo.png", "image/png"),
            _media_entry(folder, "m1", "lich-tiem-chung.png", "image/png"),
            _media_entry(folder, "m2", "dai-doan-ket.jpg", "image/jpeg"),
            _media_entry(folder, "m3", "phong-chong-thien-tai.mp4", "video/mp4"),
        ],
        "items": [
            {"id": "i1", "type": "image", "media": "m1", "duration_s": 10, "title": "Lịch tiêm chủng"},
            {"id": "i2", "type": "text", "title": "THÔNG BÁO", "duration_s": 12,
             "body": "Ủy ban nhân dân xã Vĩnh Thuận thông báo: từ ngày 01/12/2026, bộ phận Một cửa tiếp nhận hồ sơ "
                     "trực tuyến qua Cổng dịch vụ công quốc gia. Người dân cần hỗ trợ xin liên hệ Trung tâm Dịch vụ "
                     "tổng hợp xã."},
            {"id": "i3", "type": "image", "media": "m2", "duration_s": 8, "title": "Ngày hội Đại đoàn kết"},
            {"id": "i4", "type": "text", "title": "CẢNH BÁO MƯA LŨ", "duration_s": 15, "priority": "high",
             "body": "Đài Khí tượng Thủy văn tỉnh dự báo mưa lớn diện rộng. Người dân vùng trũng thấp chủ động "
                     "kê cao tài sản, không đi qua ngầm tràn, theo dõi thông báo của chính quyền địa phương.",
             "when": {"times": warning_windows}},
            # No duration_s: the video plays once, for its own length.
            {"id": "i5", "type": "video", "media": "m3", "title": "Phòng chống thiên tai"},
        ],
        "ticker": [
            {"id": "t1", "text": "Người dân chủ động theo dõi thông tin thời tiết, phòng chống thiên tai."},
            {"id": "t2", "text": "Lịch tiếp công dân: sáng thứ Năm hằng tuần tại trụ sở UBND xã."},
            {"id": "t3", "text": "Đường dây nóng UBND xã: 0296 3 123 456."},
        ],
        "default_item": "i1",
    }


def prepare(directory: Path, fullscreen: bool) -> Path:
    """Write (or reuse) the demo content, key and config; returns the config path."""
    content = directory / "content"
    (content / "media").mkdir(parents=True, exist_ok=True)
    key_file = directory / "demo-signing-key.b64"
    if key_file.exists():
        private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(key_file.read_text()))
    else:
        private = Ed25519PrivateKey.generate()
        key_file.write_text(base64.b64encode(private.private_bytes_raw()).decode())
        key_file.chmod(0o600)
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    if not (content / "manifest.json").exists():
        _draw_images(content)
        _make_video(content)
        manifest = build_manifest(content, serial=int(dt.datetime.now().timestamp()))
        payload = json.dumps(manifest, ensure_ascii=False, indent=1).encode("utf-8")
        envelope = sign_envelope(payload, MANIFEST_PAYLOAD_TYPE, private)
        (content / "manifest.json").write_text(json.dumps(envelope, indent=2))
    config = {
        "device": {"id": DEMO_DEVICE},
        "source": {"url": content.resolve().as_uri(), "poll_interval_s": 60},
        "security": {"manifest_keys": [base64.b64encode(public).decode()]},
        "storage": {"dir": str(directory / "state")},
        "display": {"width": 1920 if fullscreen else 1280, "height": 1080 if fullscreen else 720,
                    "fullscreen": fullscreen},
        "control": {"socket": str(directory / "control.sock")},
    }
    config_path = directory / "agent.yaml"
    config_path.write_text("# written by `bangtin-agent demo`; edits are overwritten\n"
                           + yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
    return config_path


def run_demo(*, fullscreen: bool, directory: Path | None) -> int:
    problem = display_available()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    directory = (directory or default_directory()).resolve()
    config_path = prepare(directory, fullscreen)
    try:
        config = load_config(config_path)
    except ConfigError as exc:  # a bug in the demo, not the user's doing
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    print(f"demo content: {directory / 'content'}\n"
          f"try: bangtin-agent ctl --config {config_path} status\n"
          f"     bangtin-agent ctl --config {config_path} alert --title 'CẢNH BÁO' --body 'Bão số 3' --minutes 1\n"
          f"     bangtin-agent report --config {config_path} --format html --out bao-cao.html\n"
          "close the window (or press Esc, or Ctrl+C) to stop", file=sys.stderr)
    import pygame

    from agent.main import run

    try:
        return run(config)
    except pygame.error as exc:
        print(f"bangtin-agent demo: cannot open the display ({exc}); try SDL_VIDEODRIVER=dummy", file=sys.stderr)
        return 1
