"""A real browser and a real PDF reader for the printable report: headless Chromium and poppler."""

from __future__ import annotations

import re
import shutil
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path

A4_PT = (595.0, 842.0)
MM = 72 / 25.4
PAGE_MARGIN_LEFT_RIGHT_MM = 14  # agent/templates/base.html.j2 @page


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "headless Chromium is needed (apt-get install chromium; scripts/bootstrap.sh installs it for tests)"
    return found


def print_to_pdf(html: Path, pdf: Path, profile: Path) -> Path:
    """Chromium prints the file as a person would (Ctrl+P to PDF), with the network pointed nowhere."""
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9", "--no-pdf-header-footer",
                    f"--print-to-pdf={pdf}", html.resolve().as_uri()],
                   check=True, capture_output=True, timeout=180)
    assert pdf.exists() and pdf.stat().st_size > 0, "Chromium wrote no PDF"
    return pdf


def screenshot(html: Path, png: Path, profile: Path) -> Path:
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9", "--window-size=900,1200",
                    f"--screenshot={png}", html.resolve().as_uri()], check=True, capture_output=True, timeout=180)
    return png


@dataclass(frozen=True)
class Pdf:
    pages: int
    page_size: tuple[float, float]
    text: str  # pdftotext -raw: the document's order, whitespace as poppler found it
    words: list[tuple[int, float, float, float, float, str]]  # page, xMin, yMin, xMax, yMax, word

    @property
    def flat(self) -> str:
        """The text with every run of whitespace as one space (cells wrap where the page says)."""
        return " ".join(self.text.split())


def read_pdf(pdf: Path) -> Pdf:
    info = subprocess.run(["pdfinfo", str(pdf)], check=True, capture_output=True, text=True).stdout
    pages = int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))  # type: ignore[union-attr]
    size = re.search(r"^Page size:\s+([\d.]+) x ([\d.]+) pts", info, re.M)
    assert size is not None, info
    text = subprocess.run(["pdftotext", "-raw", "-enc", "UTF-8", str(pdf), "-"], check=True, capture_output=True).stdout
    boxes = subprocess.run(["pdftotext", "-bbox", "-enc", "UTF-8", str(pdf), "-"], check=True, capture_output=True,
                           text=True).stdout
    words = []
    page = 0
    for line in boxes.splitlines():
        if "<page " in line:
            page += 1
        match = re.search(r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">(.*)</word>', line)
        if match:
            words.append((page, *(float(match.group(n)) for n in range(1, 5)), match.group(5)))
    return Pdf(pages, (float(size.group(1)), float(size.group(2))), text.decode("utf-8"), words)


def assert_a4_and_inside_margins(pdf: Pdf) -> None:
    """A4, and no word of any table runs past the printable area (a too-wide table would)."""
    width, height = pdf.page_size
    assert abs(width - A4_PT[0]) < 2 and abs(height - A4_PT[1]) < 2, f"not A4: {pdf.page_size}"
    left, right = PAGE_MARGIN_LEFT_RIGHT_MM * MM - 1, width - PAGE_MARGIN_LEFT_RIGHT_MM * MM + 1
    outside = [w for w in pdf.words if w[1] < left or w[3] > right or w[4] > height]
    assert not outside, f"{len(outside)} word(s) outside the printable area, e.g. {outside[:3]}"
    assert {w[0] for w in pdf.words} == set(range(1, pdf.pages + 1)), "a page without text"


def vietnamese_letters() -> str:
    """The 134 non-ASCII Vietnamese letters, each one precomposed code point, in groups of six."""
    tones = ["", "\u0300", "\u0301", "\u0309", "\u0303", "\u0323"]
    bases = ["a", "ă", "â", "e", "ê", "i", "o", "ô", "ơ", "u", "ư", "y"]
    letters = [unicodedata.normalize("NFC", b + t) for b in bases for t in tones if b + t not in "aeiouy"] + ["đ"]
    letters += [letter.upper() for letter in letters]
    assert len(letters) == 134 and all(len(letter) == 1 for letter in letters)
    return " ".join("".join(letters[n:n + 6]) for n in range(0, len(letters), 6))
