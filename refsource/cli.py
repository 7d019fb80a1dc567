"""`python -m refsource`: keys, publishing a folder as a signed manifest, serving it.

  python -m refsource keygen --out province-key.json
  python -m refsource publish --content ./bulletin --site ./site --device vinhthuan-ubnd-01 --key province-key.json \
      [--group angiang]
  python -m refsource serve --site ./site --port 8080 [--token T]
  python -m refsource report --site ./site [--from DATE] [--to DATE] [--format html|csv|json] [--out FILE]
  python -m refsource provision --key provision-key.json --device vinhthuan-ubnd-01 --url https://… --token T \
      [--manifest-key B64] [--board-key KEY-OR-QR-TEXT] [--out bangtin-provision-vinhthuan-ubnd-01.json]

`publish` reads `<content>/manifest.json`, whose media entries name files in the folder by `url`
(`sha256`, `size` and `type` may be left out: they are filled in), copies each file into
`<site>/media/<sha256>.<ext>` (one store for every board), points the urls there, sets the serial
to one more than the site's last for that device (or `--serial`), sets `audience` to the device
(and `group:<name>` for each `--group`) unless the folder's manifest names its own, signs with the
key, and writes `<site>/devices/<device>/manifest`. `serve` keeps what boards upload in the site
(refsource/uploads.py); `report` is the province's table over them (refsource/report.py).
`provision` makes the signed bundle a technician drops on a board (docs/provisioning.md).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import hashlib
import json
import logging
import mimetypes
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.envelope import MANIFEST_PAYLOAD_TYPE, keyid_of, open_envelope, sign_envelope
from agent.limits import MAX_MANIFEST_BYTES
from refsource import uploads
from refsource.boards import BoardKeys
from refsource.release import build_release, release_reference
from refsource.server import ReferenceServer, SourceState

DEFAULT_BASE_PATH = "/api/bangtin/v1"


def keygen(out: Path) -> dict[str, str]:
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    key = {"private_seed_b64": base64.b64encode(private.private_bytes_raw()).decode(),
           "public_key_b64": base64.b64encode(public).decode(), "keyid": keyid_of(public)}
    write_private(out, json.dumps(key, indent=2).encode())
    return key


def write_private(path: Path, data: bytes) -> None:
    """A file only its owner may read, from its first byte (a key, a bundle holding a token)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """A key made by `keygen`; ValueError says what is wrong with the file."""
    try:
        return Ed25519PrivateKey.from_private_bytes(base64.b64decode(json.loads(path.read_text())["private_seed_b64"]))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the key ({exc.strerror or exc})") from None
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ValueError(f"{path}: not a key made by `refsource keygen` ({exc})") from None


def last_serial(site: Path, device: str) -> int:
    path = site / "devices" / device / "manifest"
    if not path.exists():
        return 0
    document = open_envelope(path.read_bytes(), MANIFEST_PAYLOAD_TYPE, (), max_bytes=MAX_MANIFEST_BYTES).document
    return int(document.get("serial", 0))


def publish(content: Path, site: Path, device: str, key: Path | None, serial: int | None = None,
            base_path: str = DEFAULT_BASE_PATH, groups: tuple[str, ...] = (),
            release: Path | None = None) -> dict[str, Any]:
    """Sign `content` for one device. The audience names the device (and `groups`, when given) unless
    the folder's manifest.json sets its own: a signed manifest without one is refused (§3, v1.1)."""
    manifest = json.loads((content / "manifest.json").read_text(encoding="utf-8"))
    (site / "media").mkdir(parents=True, exist_ok=True)
    for media in manifest.get("media", []):
        source = content / media["url"]
        data = source.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        suffix = source.suffix.lower()
        target = site / "media" / f"{sha}{suffix}"
        if not target.exists():
            shutil.copyfile(source, target)
        media.update(sha256=sha, size=len(data), url=f"{base_path.rstrip('/')}/media/{sha}{suffix}")
        media.setdefault("type", mimetypes.guess_type(source.name)[0] or "application/octet-stream")
    manifest["schema"] = "bangtin.manifest/1"
    manifest.setdefault("audience", [device, *(f"group:{group}" for group in groups)])
    manifest["serial"] = serial if serial is not None else last_serial(site, device) + 1
    manifest.setdefault("issued_at", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    if release is not None:
        manifest["release"] = release_reference(release, base_path)
    payload = json.dumps(manifest, ensure_ascii=False, indent=1).encode("utf-8")
    body = json.dumps(sign_envelope(payload, MANIFEST_PAYLOAD_TYPE, load_private_key(key))).encode() if key else payload
    out = site / "devices" / device / "manifest"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(body)
    return manifest


def provision(key: Path, device: str, url: str, out: Path, *, token: str | None = None, groups: tuple[str, ...] = (),
              manifest_keys: tuple[str, ...] = (), release_keys: tuple[str, ...] = (), mqtt: str | None = None,
              board_key: str | None = None, serial: int | None = None,
              settings: tuple[str, ...] = (), any_board: bool = False) -> dict[str, Any]:
    """A provisioning bundle (PROTOCOL.md §12) for one board, signed with the province's
    provisioning key. `board_key` (a base64 public key, or the text of the board's enrolment QR
    code) binds it to that board; a bundle for any board needs `any_board` (it enrols only boards
    not enrolled yet, and any of them: keep it out of drawers). The serial defaults to the time in
    seconds, so each new bundle is higher than the last without keeping state. `settings` are
    `key.path=value` (value in YAML). The config is checked as a board would check it."""
    from agent.config import ConfigError, config_from_mapping
    from agent.enrolment import QR_PREFIX, public_key_from_qr
    from agent.envelope import PROVISION_PAYLOAD_TYPE

    config: dict[str, Any] = {"device": {"id": device, **({"groups": list(groups)} if groups else {})},
                              "source": {"url": url, **({"token": token} if token else {})}}
    if manifest_keys or release_keys:
        config["security"] = {**({"manifest_keys": list(manifest_keys)} if manifest_keys else {}),
                              **({"release_keys": list(release_keys)} if release_keys else {})}
    if mqtt:
        config["mqtt"] = {"url": mqtt}
    for setting in settings:
        path, sep, value = setting.partition("=")
        if not sep or not path:
            raise ValueError(f"--set {setting!r}: expected key.path=value")
        *sections, name = path.split(".")
        node = config
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = yaml.safe_load(value)
    if board_key is None and not any_board:
        raise ValueError("--board-key: bind the bundle to its board (its public key, or its enrolment QR code's "
                         "text), or say --any-board")
    if board_key is not None and board_key.startswith(QR_PREFIX):
        board_key = public_key_from_qr(board_key)
    try:
        if board_key is not None and len(base64.b64decode(board_key, validate=True)) != 32:
            raise ValueError
    except (ValueError, binascii.Error):
        raise ValueError(f"--board-key: expected a base64 Ed25519 public key or the board's QR code text, found "
                         f"{board_key!r}") from None
    try:
        config_from_mapping(config, out, on_this_machine=False)  # what the board will say about it, said here first
    except ConfigError as exc:
        raise ValueError("the bundle's config would be refused by the board:\n  " + "\n  ".join(exc.problems)) from None
    payload = {"schema": "bangtin.provision/1", "serial": serial if serial is not None else int(time.time()),
               "board_key": board_key, "config": config}
    envelope = sign_envelope(json.dumps(payload, ensure_ascii=False).encode("utf-8"), PROVISION_PAYLOAD_TYPE,
                             load_private_key(key))
    write_private(out, json.dumps(envelope).encode())  # it carries the device token
    return payload


def load_site(site: Path, state: SourceState) -> None:
    """Every device's manifest and every media file of a published site."""
    devices = site / "devices"
    if devices.is_dir():
        for device in devices.iterdir():
            if (device / "manifest").is_file():
                state.manifests[device.name] = (device / "manifest").read_bytes()
    for file in (site / "media").glob("*") if (site / "media").is_dir() else []:
        state.media[f"{state.base_path.rstrip('/')}/media/{file.name}"] = file
    releases = site / "releases"
    for file in releases.rglob("*") if releases.is_dir() else []:
        if file.is_file():
            state.media[f"{state.base_path.rstrip('/')}/releases/{file.relative_to(releases).as_posix()}"] = file
    state.site = site  # uploads are kept in the site (and records already there are not taken twice)
    state.board_keys.on_conflict = lambda conflict: uploads.append_conflict(site, conflict)
    for folder in uploads.devices(site):
        for record in uploads.read_records(folder):
            state.playlogs.setdefault(str(record.get("id")), record)


def _date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, found {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refsource", description="bangtin reference source (tests, development)")
    commands = parser.add_subparsers(dest="command", required=True)
    k = commands.add_parser("keygen", help="make an Ed25519 signing key (JSON, mode 0600)")
    k.add_argument("--out", type=Path, required=True)
    p = commands.add_parser("publish", help="sign a content folder into a site for one device")
    p.add_argument("--content", type=Path, required=True)
    p.add_argument("--site", type=Path, required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--key", type=Path, help="signing key from keygen (without it: a bare manifest)")
    p.add_argument("--serial", type=int, help="default: the site's last serial for the device + 1")
    p.add_argument("--base-path", default=DEFAULT_BASE_PATH)
    p.add_argument("--group", action="append", default=[], metavar="NAME",
                   help="also address the device's group NAME (audience group:NAME); repeatable")
    p.add_argument("--release", type=Path, metavar="FILE", help="a release document (from `release`) the board should run")
    r = commands.add_parser("release", help="sign a release of the agent from a folder of wheels (PROTOCOL.md §11)")
    r.add_argument("--wheels", type=Path, required=True, help="the agent's wheel and its dependencies, every platform")
    r.add_argument("--key", type=Path, required=True, help="the release signing key (keygen); not the content key")
    r.add_argument("--version", required=True)
    r.add_argument("--site", type=Path, required=True)
    r.add_argument("--serial", type=int, help="default: the site's last release serial + 1")
    r.add_argument("--device", action="append", default=[], metavar="ID", help="audience: this board; repeatable")
    r.add_argument("--group", action="append", default=[], metavar="NAME", help="audience: group:NAME; repeatable")
    s = commands.add_parser("serve", help="serve a site over HTTP")
    s.add_argument("--site", type=Path, required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--base-path", default=DEFAULT_BASE_PATH)
    s.add_argument("--token", default=os.environ.get("REFSOURCE_TOKEN"), help="require this bearer token")
    s.add_argument("--registry", type=Path, metavar="FILE",
                   help="board keys, {device id: base64 key}: read at start, new boards added (conflicts are "
                        "logged and appended to FILE's .conflicts.jsonl)")
    v = commands.add_parser("provision", help="make a provisioning bundle for one board (PROTOCOL.md §12)")
    v.add_argument("--key", type=Path, required=True, help="the provisioning signing key (keygen)")
    v.add_argument("--device", required=True, help="device.id the board gets")
    v.add_argument("--url", required=True, help="source.url the board gets")
    v.add_argument("--token", default=os.environ.get("REFSOURCE_TOKEN"),
                   help="the board's device token (or REFSOURCE_TOKEN); --no-token for a bundle that keeps the "
                        "board's token (rotating keys)")
    v.add_argument("--no-token", action="store_true", help="carry no token: the board keeps the one it has")
    v.add_argument("--group", action="append", default=[], metavar="NAME", help="device.groups; repeatable")
    v.add_argument("--manifest-key", action="append", default=[], metavar="B64",
                   help="security.manifest_keys (the content key's public half); repeatable")
    v.add_argument("--release-key", action="append", default=[], metavar="B64", help="security.release_keys")
    v.add_argument("--mqtt", metavar="URL", help="mqtt.url")
    v.add_argument("--board-key", metavar="KEY", help="bind to one board: its public key, or its enrolment QR text")
    v.add_argument("--any-board", action="store_true",
                   help="no board key: the first unenrolled board that sees it takes it (an enrolled board never)")
    v.add_argument("--serial", type=int, help="default: the time in seconds (higher than any earlier bundle)")
    v.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other config key; repeatable")
    v.add_argument("--out", type=Path, help="default: bangtin-provision-<device>.json (the name boards look for "
                                             "on a USB stick)")
    r = commands.add_parser("report", help="the province's report over every board that uploaded to a site")
    r.add_argument("--site", type=Path, required=True)
    r.add_argument("--from", dest="date_from", type=_date, metavar="DATE", help="first day, YYYY-MM-DD (local)")
    r.add_argument("--to", dest="date_to", type=_date, metavar="DATE", help="last day, YYYY-MM-DD (local)")
    r.add_argument("--format", choices=["html", "csv", "json"], default="csv")
    r.add_argument("--out", type=Path, metavar="FILE", help="write to FILE instead of standard output")
    r.add_argument("--silent-hours", type=float, default=48.0,
                   help="a board not heard from this long before the period's end went silent (default 48)")
    args = parser.parse_args(argv)
    if args.command == "report":
        from refsource.report import build, format_province

        text = format_province(build(args.site, args.date_from, args.date_to, now=dt.datetime.now(dt.UTC),
                                     silent_hours=args.silent_hours), args.format)
        if args.out is None:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
        else:
            args.out.write_text(text, encoding="utf-8")
            print(f"{args.out}: {args.format} report over the boards in {args.site}", file=sys.stderr)
        return 0
    if args.command == "provision":
        out = args.out or Path(f"bangtin-provision-{args.device}.json")
        if not args.token and not args.no_token:
            print("refsource provision: --token (or REFSOURCE_TOKEN): the board's device token; or --no-token for "
                  "a bundle that keeps the token the board has", file=sys.stderr)
            return 2
        try:
            payload = provision(args.key, args.device, args.url, out, token=None if args.no_token else args.token,
                                groups=tuple(args.group), manifest_keys=tuple(args.manifest_key),
                                release_keys=tuple(args.release_key), mqtt=args.mqtt, board_key=args.board_key,
                                serial=args.serial, settings=tuple(args.set), any_board=args.any_board)
        except (ValueError, binascii.Error) as exc:
            print(f"refsource provision: {exc}", file=sys.stderr)
            return 2
        bound = (f"bound to board key {payload['board_key']}" if payload["board_key"]
                 else "for any board not enrolled yet: keep it out of drawers")
        print(f"{out}: bundle serial {payload['serial']} for {args.device}, {bound}")
        return 0
    if args.command == "keygen":
        key = keygen(args.out)
        print(f"{args.out}: keyid {key['keyid']}\nput on the boards (security.manifest_keys): {key['public_key_b64']}")
        return 0
    if args.command == "publish":
        manifest = publish(args.content, args.site, args.device, args.key, args.serial, args.base_path,
                           tuple(args.group), args.release)
        print(f"published serial {manifest['serial']} for {args.device} ({len(manifest.get('items', []))} items)"
              f"{'' if args.key else ' UNSIGNED'}")
        return 0
    if args.command == "release":
        try:
            path, document = build_release(args.wheels, load_private_key(args.key), args.version, args.site,
                                           devices=tuple(args.device), groups=tuple(args.group), serial=args.serial)
        except ValueError as exc:
            print(f"refsource release: {exc}", file=sys.stderr)
            return 2
        print(f"{path}: release {document['serial']} ({document['version']}), {len(document['wheels'])} wheel(s)")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    state = SourceState(base_path=args.base_path, token=args.token, board_keys=BoardKeys.from_registry(args.registry))
    load_site(args.site, state)
    server = ReferenceServer((args.host, args.port), state)
    print(f"serving {len(state.manifests)} device(s) at {server.base_url}", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
