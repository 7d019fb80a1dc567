"""Pixels read back from the VM's display (QMP screendump, PPM), and checks on the board's zones.

The zones follow agent/display/renderer.py: header 11 % of the height (theme background, title in
the foreground colour, a 3-px accent underline), the ticker band 7.5 % at the bottom (accent fill,
text in the background colour) and the main zone between them.
"""

from __future__ import annotations

from dataclasses import dataclass

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class Screen:
    width: int
    height: int
    pixels: bytes  # RGB, row-major

    def at(self, x: int, y: int) -> Colour:
        offset = (y * self.width + x) * 3
        return self.pixels[offset], self.pixels[offset + 1], self.pixels[offset + 2]

    def region(self, top: float, bottom: float, left: float = 0.0, right: float = 1.0, step: int = 4) -> list[Colour]:
        """Sampled pixels of a band, in fractions of the screen."""
        ys = range(int(self.height * top), max(int(self.height * top) + 1, int(self.height * bottom)), step)
        xs = range(int(self.width * left), max(int(self.width * left) + 1, int(self.width * right)), step)
        return [self.at(x, y) for y in ys for x in xs]

    def share(self, colour: Colour, top: float, bottom: float, left: float = 0.0, right: float = 1.0,
              tolerance: int = 24) -> float:
        samples = self.region(top, bottom, left, right)
        return sum(near(p, colour, tolerance) for p in samples) / max(1, len(samples))

    def dark(self) -> bool:
        """Black or nearly: nothing the board draws is (the splash and content never are)."""
        samples = self.region(0.0, 1.0, step=16)
        return sum(max(p) < 24 for p in samples) / max(1, len(samples)) > 0.97

    def digest(self, top: float = 0.0, bottom: float = 1.0) -> int:
        return hash(self.pixels[int(self.height * top) * self.width * 3:int(self.height * bottom) * self.width * 3])


def near(colour: Colour, expected: Colour, tolerance: int = 24) -> bool:
    return all(abs(c - e) <= tolerance for c, e in zip(colour, expected, strict=True))


def hex_colour(text: str) -> Colour:
    return int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)


def read_ppm(data: bytes) -> Screen:
    """Binary PPM (P6, maxval 255) as QEMU's screendump writes it."""
    fields: list[bytes] = []
    index = 0
    while len(fields) < 4:
        while data[index:index + 1].isspace():
            index += 1
        if data[index:index + 1] == b"#":
            index = data.index(b"\n", index) + 1
            continue
        end = index
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(data[index:end])
        index = end
    if fields[0] != b"P6" or fields[3] != b"255":
        raise ValueError(f"not a P6/255 PPM: {fields!r}")
    width, height = int(fields[1]), int(fields[2])
    pixels = data[index + 1:index + 1 + width * height * 3]
    if len(pixels) != width * height * 3:
        raise ValueError("truncated PPM")
    return Screen(width, height, pixels)


@dataclass(frozen=True)
class Look:
    """What a healthy board with our test manifest shows: header, one of the items, the ticker."""

    background: Colour
    foreground: Colour
    accent: Colour
    items: dict[str, Colour]  # item id -> the colour its image fills the main zone with

    def header_ok(self, screen: Screen) -> bool:
        # Title letters in the foreground colour on the theme background.
        return (screen.share(self.background, 0.0, 0.10) > 0.5
                and screen.share(self.foreground, 0.01, 0.10, 0.0, 0.7) > 0.01)

    def ticker_ok(self, screen: Screen) -> bool:
        # Accent band with text drawn in the background colour (when a line is on screen).
        return screen.share(self.accent, 0.93, 1.0) > 0.4

    def item(self, screen: Screen) -> str | None:
        """Which item fills the main zone, judged from its whole middle (a torn image does not pass)."""
        for item, colour in self.items.items():
            if screen.share(colour, 0.16, 0.88, 0.05, 0.95, tolerance=30) > 0.97:
                return item
        return None

    def content(self, screen: Screen) -> str | None:
        """The item on screen when header, content and ticker are all there, else None."""
        item = self.item(screen)
        return item if item is not None and self.header_ok(screen) and self.ticker_ok(screen) else None

    def describe(self, screen: Screen) -> str:
        middle = screen.at(screen.width // 2, screen.height // 2)
        return (f"{screen.width}x{screen.height}, header {'ok' if self.header_ok(screen) else 'missing'}, "
                f"ticker {'ok' if self.ticker_ok(screen) else 'missing'}, item {self.item(screen)}, "
                f"centre pixel {middle}, dark {screen.dark()}")
