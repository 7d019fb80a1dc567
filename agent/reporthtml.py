"""`report --format html`: the yearly report as one printable, offline HTML file in Vietnamese.

The words are in the template (agent/templates/report.html.j2): the document is Vietnamese for
the commune and the province whatever the locale of whoever makes it. Everything it needs is inside
the one file: DejaVu Sans (the font the board draws with: every Vietnamese letter) as base64, the
chart as inline SVG drawn from the figures here, the A4 print layout as CSS; it fetches nothing.
Numbers are written the Vietnamese way: 1.234,5 (dot for thousands, comma for decimals).
"""

from __future__ import annotations

import base64
import datetime as dt
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from agent import __version__

TEMPLATES = Path(__file__).parent / "templates"
FONTS = Path(__file__).parent / "display" / "fonts"
PRIORITY_NAMES = {"normal": "Thông thường", "high": "Ưu tiên", "emergency": "Khẩn cấp"}
TYPE_NAMES = {"image": "Hình ảnh", "video": "Video", "text": "Văn bản", "alert": "Cảnh báo"}
CAUSE_NAMES = {"power_cut": "Mất điện (suy ra khi khởi động lại)", "crash": "Phần mềm dừng bất thường",
               "stopped": "Tắt có chủ đích", "failure": "Lỗi hiển thị, tự khởi động lại", "unknown": "Không rõ"}
CHART_W, CHART_H = 680.0, 190.0  # SVG user units; the CSS scales it to the page width


def number(value: float | int | None, decimals: int = 0) -> str:
    """1234567.891 → "1.234.567,89" (Vietnamese grouping and decimal comma)."""
    if value is None:
        return "—"
    text = f"{value:,.{decimals}f}"
    return text.replace(",", "\x00").replace(".", ",").replace("\x00", ".")


def hours(value: float | None) -> str:
    return number(value, 2)


def hms(seconds: float | None) -> str:
    """On-screen time to the second: "12:03:04" (hours may pass 24)."""
    if seconds is None:
        return "—"
    total = round(seconds)
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def day(text: str | None) -> str:
    """2026-11-26 → 26/11/2026."""
    if not text:
        return "—"
    year, month, date = text[:10].split("-")
    return f"{date}/{month}/{year}"


def moment(text: str | None) -> str:
    """An RFC 3339 time → "26/11/2026 08:00:15" (its own local time)."""
    if not text:
        return "—"
    return f"{day(text)} {text[11:19]}"


def month(text: str) -> str:
    return f"{text[5:7]}/{text[:4]}"


def chart(days: list[dict[str, Any]]) -> dict[str, Any]:
    """Bars per day: hours lit (pale) behind hours of content on screen (dark), on a 0-24 h scale."""
    count = max(1, len(days))
    left, bottom, top = 34.0, CHART_H - 22.0, 8.0
    step = (CHART_W - left - 4) / count
    scale = (bottom - top) / 24.0
    bars = []
    for n, entry in enumerate(days):
        width = max(min(step * 0.8, 18.0), 0.3)  # a short period gets bars, not slabs
        x = left + n * step + (step - width) / 2
        lit = min(24.0, entry["lit_h"]) * scale
        shown = min(24.0, entry["on_screen_s"] / 3600) * scale
        bars.append({"x": round(x, 2), "w": round(width, 2), "lit_y": round(bottom - lit, 2),
                     "lit_h": round(lit, 2), "shown_y": round(bottom - shown, 2), "shown_h": round(shown, 2),
                     "title": f"{day(entry['day'])}: {hours(entry['on_screen_s'] / 3600)} giờ hiển thị, "
                              f"{hours(entry['lit_h'])} giờ sáng"})
    ticks = [{"y": round(bottom - h * scale, 2), "label": str(h)} for h in (0, 6, 12, 18, 24)]
    every = max(1, round(count / 12))
    labels = [{"x": round(left + n * step + step / 2, 2), "label": day(entry["day"])[:5]}
              for n, entry in enumerate(days) if n % every == 0]
    return {"width": CHART_W, "height": CHART_H, "left": left, "bottom": bottom, "right": CHART_W - 4, "bars": bars,
            "ticks": ticks, "labels": labels}


@cache
def _font(name: str) -> str:
    return base64.b64encode((FONTS / name).read_bytes()).decode("ascii")


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(number=number, hours=hours, hms=hms, day=day, moment=moment, month=month,
                       priority=lambda p: PRIORITY_NAMES.get(p, p), kind=lambda t: TYPE_NAMES.get(t, t),
                       cause=lambda c: CAUSE_NAMES.get(c, c))
    return env


def render_html(report: dict[str, Any], *, title: str = "BÁO CÁO KẾT QUẢ HOẠT ĐỘNG BẢNG TIN ĐIỆN TỬ CÔNG CỘNG",
                boards: list[dict[str, Any]] | None = None) -> str:
    """The board's report (`boards` None) or the province's (one row per board, then each board's)."""
    template = _environment().get_template("report.html.j2" if boards is None else "province.html.j2")
    return template.render(
        report=report, boards=boards, title=title, version=__version__,
        generated=dt.datetime.now().astimezone().strftime("%d/%m/%Y %H:%M"),
        font_regular=_font("DejaVuSans.ttf"), font_bold=_font("DejaVuSans-Bold.ttf"),
        chart=chart(report.get("days") or []), priorities=PRIORITY_NAMES, chart_for=chart)
