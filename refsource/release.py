"""`python -m refsource release`: a signed release document from a folder of wheels (PROTOCOL.md §11).

    python -m refsource release --wheels DIR --key release-key.json --version 1.2.0 --site SITE \\
        --group angiang [--device ID] [--serial N]

Copies the wheels into `<site>/releases/wheels/` (one store for every release: a wheel two releases
share is kept once), lists each with its SHA-256 and size, and writes the document, signed with the
release key, to `<site>/releases/release-<serial>.json`. The serial is one more than the site's
highest unless given. `publish --release FILE` then makes a manifest name it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from agent.envelope import RELEASE_PAYLOAD_TYPE, open_envelope, sign_envelope

RELEASE_NAME = re.compile(r"^release-(\d+)\.json$")


def last_release_serial(site: Path) -> int:
    folder = site / "releases"
    serials = [int(match.group(1)) for path in folder.glob("release-*.json") if (match := RELEASE_NAME.match(path.name))]
    return max(serials, default=0)


def build_release(wheels: Path, key: Any, version: str, site: Path, *, devices: tuple[str, ...] = (),
                  groups: tuple[str, ...] = (), serial: int | None = None) -> tuple[Path, dict[str, Any]]:
    """Sign a release of every wheel in `wheels` into `site`; returns the document's path and payload."""
    if not devices and not groups:
        raise ValueError("a release needs an audience: --device ID or --group NAME (boards refuse one without)")
    store = site / "releases" / "wheels"
    store.mkdir(parents=True, exist_ok=True)
    listed = []
    for wheel in sorted(wheels.glob("*.whl")):
        data = wheel.read_bytes()
        target = store / wheel.name
        if not target.exists() or target.read_bytes() != data:
            shutil.copyfile(wheel, target)
        listed.append({"name": wheel.name, "url": f"wheels/{wheel.name}", "sha256": hashlib.sha256(data).hexdigest(),
                       "size": len(data)})
    if not listed:
        raise ValueError(f"no wheels (*.whl) in {wheels}")
    number = serial if serial is not None else last_release_serial(site) + 1
    document = {"schema": "bangtin.release/1", "serial": number, "version": version,
                "issued_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "audience": [*devices, *(f"group:{group}" for group in groups)], "wheels": listed}
    payload = json.dumps(document, indent=1).encode()
    path = site / "releases" / f"release-{number}.json"
    path.write_text(json.dumps(sign_envelope(payload, RELEASE_PAYLOAD_TYPE, key)))
    return path, document


def release_reference(path: Path, base_path: str) -> dict[str, Any]:
    """The manifest's `release`: where the document is served, and its SHA-256 and size."""
    data = path.read_bytes()
    open_envelope(data, RELEASE_PAYLOAD_TYPE, (), max_bytes=1024 * 1024)  # a release document, not anything
    return {"url": f"{base_path.rstrip('/')}/releases/{path.name}", "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data)}
