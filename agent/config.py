"""The config file (AGENT.md): schema declared once, here, as frozen dataclasses.

Each field's default, checks and secrecy live in its `field(metadata=...)`; the loader walks the
dataclasses, so adding a key is one line. Every problem is collected (not just the first) and
reported as `file:line: key.path: expected X, found Y`, with a did-you-mean for unknown keys.
Secrets are never echoed.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import difflib
import os
import re
import stat
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from agent.i18n import N_, _
from agent.limits import show_value

Check = Callable[[Any], str | None]  # returns what was expected when the value is wrong


def setting(default: Any, *, check: Check | None = None, secret: bool = False, required: bool = False,
            path: bool = False) -> Any:
    """A config key: its default, an extra check, whether it is secret, required, a filesystem path."""
    meta = {"check": check, "secret": secret, "required": required, "path": path}
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


def _at_least(minimum: float) -> Check:
    return lambda value: None if value >= minimum else _("a number >= {minimum}").format(minimum=f"{minimum:g}")


def _in_range(low: int, high: int) -> Check:
    return lambda value: None if low <= value <= high else _("a number from {low} to {high}").format(low=low, high=high)


def _device_id(value: str) -> str | None:
    return None if re.fullmatch(r"[a-z0-9._-]{1,64}", value) else _("1-64 characters of a-z, 0-9, '.', '_', '-'")


def _groups(value: tuple[str, ...]) -> str | None:
    bad = [g for g in value if not re.fullmatch(r"[a-z0-9._-]{1,64}", g)]
    return _("group names of a-z, 0-9, '.', '_', '-' (bad: {name})").format(name=repr(bad[0])) if bad else None


def _source_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme == "file" and parts.path:
        return None
    if parts.scheme in ("http", "https") and parts.netloc:
        return None
    return _("an https://, http:// or file:/// URL")


def _mqtt_urls(value: str | tuple[str, ...] | None) -> str | None:
    urls = (value,) if isinstance(value, str) else (value or ())
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            return _("mqtt:// or mqtts:// URL (or a list of them)")
    return None


TOKEN_PATTERN = re.compile(r"[\x21-\x7e]{1,4096}")  # printable ASCII, no spaces: what an HTTP header can carry


def _token(value: str) -> str | None:
    return None if TOKEN_PATTERN.fullmatch(value) else _("printable characters without spaces or line breaks")


def read_token_file(path: str) -> str:
    """The token in a token file (whitespace around it stripped); ValueError says what is wrong, never the token."""
    mode = os.stat(path).st_mode
    if mode & 0o137:  # group may read at most (0640); nobody else at all
        raise ValueError(_("mode {mode} lets other users read or change it (expected 0600 or 0640)").format(
            mode=f"{stat.S_IMODE(mode):04o}"))
    with open(path, "rb") as handle:
        raw = handle.read(8193)
    try:
        token = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(_("it is not UTF-8 text")) from None
    if len(raw) > 8192 or (token and _token(token)):
        raise ValueError(_("it holds more than one printable word (a token has no spaces or line breaks inside)"))
    return token


def _keys(value: tuple[str, ...]) -> str | None:
    for key in value:
        try:
            if len(base64.b64decode(key, validate=True)) == 32:
                continue
        except (binascii.Error, ValueError):
            pass
        return _("standard base64 of raw 32-byte Ed25519 public keys")
    return None


@dataclass(frozen=True)
class DeviceConfig:
    id: str = setting("", check=_device_id, required=True)
    groups: tuple[str, ...] = setting((), check=_groups)


@dataclass(frozen=True)
class SourceConfig:
    url: str = setting("", check=_source_url, required=True)
    token: str | None = setting(None, secret=True, check=_token)
    token_file: str | None = setting(None, path=True)
    poll_interval_s: int = setting(300, check=_at_least(10))
    ca_file: str | None = setting(None, path=True)


@dataclass(frozen=True)
class SecurityConfig:
    manifest_keys: tuple[str, ...] = setting((), check=_keys)


@dataclass(frozen=True)
class MqttConfig:
    url: str | tuple[str, ...] | None = setting(None, check=_mqtt_urls)
    topic_prefix: str = setting("bangtin")
    keepalive_s: int = setting(60, check=_in_range(5, 3600))
    ca_file: str | None = setting(None, path=True)


@dataclass(frozen=True)
class ReportConfig:
    heartbeat_interval_s: int = setting(60, check=_at_least(10))
    upload_interval_s: int = setting(30, check=_at_least(1))
    batch_size: int = setting(200, check=_in_range(1, 5000))
    outbox_max_records: int = setting(90 * 24 * 360, check=_at_least(1000))  # 90 days of 10-second items
    journal_days: int = setting(400, check=_in_range(1, 3650))


@dataclass(frozen=True)
class StorageConfig:
    dir: str = setting("/var/lib/bangtin", path=True)
    cache_max_mb: int = setting(2048, check=_at_least(16))


@dataclass(frozen=True)
class DisplayConfig:
    width: int = setting(1920, check=_in_range(160, 8192))
    height: int = setting(1080, check=_in_range(120, 8192))
    fullscreen: bool = setting(True)
    fps: int = setting(30, check=_in_range(1, 120))
    crossfade_ms: int = setting(0, check=_in_range(0, 2000))
    splash_title: str = setting("BẢNG TIN ĐIỆN TỬ")
    power_on_command: str | None = setting("auto")  # "auto": HDMI-CEC via cec-ctl when installed; null: none
    power_off_command: str | None = setting("auto")


@dataclass(frozen=True)
class ControlConfig:
    socket: str = setting("/run/bangtin/control.sock", path=True)


@dataclass(frozen=True)
class Config:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    display: DisplayConfig = field(default_factory=DisplayConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    path: str = ""  # the file it came from, for messages and `ctl --config`

    def token(self) -> str | None:
        """The device token, from `source.token` or `source.token_file` (checked by check-config)."""
        if self.source.token:
            return self.source.token
        if self.source.token_file:
            return read_token_file(self.source.token_file) or None
        return None


class ConfigError(Exception):
    """Every problem found in a config file, one message per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --- loading ------------------------------------------------------------------------------


class _LineLoader(yaml.SafeLoader):
    """Remembers the line of every mapping key so messages can point at it."""


def _compose_lines(text: str) -> tuple[Any, dict[str, int]]:
    loader = _LineLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[str, int] = {}

        def walk(current: yaml.Node, prefix: str) -> None:
            if isinstance(current, yaml.MappingNode):
                for key_node, value_node in current.value:
                    key_path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                    lines[key_path] = key_node.start_mark.line + 1
                    walk(value_node, key_path)

        if node is not None:
            walk(node, "")
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return data, lines


def _describe(value: Any, secret: bool) -> str:
    if secret:
        return _("a value (hidden)")
    if value is None:
        return _("nothing (null)")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return _("a mapping") if isinstance(value, dict) else _("a list")
    return show_value(value)


def _expected_type(annotation: Any) -> str:
    names = {int: N_("an integer"), float: N_("a number"), bool: N_("true or false"), str: N_("a string")}
    if annotation in names:
        return _(names[annotation])
    args = typing.get_args(annotation)
    parts = [(N_("a list of strings") if typing.get_origin(a) is tuple else names.get(a, "null")) for a in args]
    text = _(" or ").join(dict.fromkeys(_(p) for p in parts if p != "null"))
    return text + (_(" (or null)") if type(None) in args else "")


def _coerce(value: Any, annotation: Any) -> tuple[bool, Any]:
    """(ok, value) for the handful of shapes config keys take."""
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if annotation is str:
        return isinstance(value, str), value
    if typing.get_origin(annotation) is tuple:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return ok, tuple(value) if ok else value
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            if option is type(None):
                if value is None:
                    return True, None
                continue
            ok, coerced = _coerce(value, option)
            if ok:
                return True, coerced
        return False, value
    raise TypeError(f"config schema uses an unsupported type {annotation!r}")


def _all_key_paths(cls: type = Config, prefix: str = "") -> list[str]:
    paths = []
    for fld in dataclasses.fields(cls):
        if fld.name == "path":
            continue
        key_path = f"{prefix}{fld.name}"
        paths.append(key_path)
        hints = typing.get_type_hints(cls)
        if dataclasses.is_dataclass(hints[fld.name]):
            paths.extend(_all_key_paths(hints[fld.name], key_path + "."))
    return paths


def _build(cls: type, data: Mapping[str, Any], prefix: str, report: Callable[[str, str], None],
           base_dir: Path) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name != "path"}
    all_paths = _all_key_paths()
    for key in data:
        if not isinstance(key, str):
            report(f"{prefix}{_describe(key, False)}", _("expected a key name, found a key that is not text"))
            continue
        if key not in known:
            key_path = f"{prefix}{key}"
            close = difflib.get_close_matches(key_path, all_paths, n=1, cutoff=0.6)
            if not close:
                close = [f"{prefix}{m}" for m in difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)]
            if close:
                report(key_path, _("unknown key; did you mean '{key}'?").format(key=close[0]))
            else:
                report(key_path, _("unknown key; known keys here: {keys}").format(keys=", ".join(sorted(known))))
    values: dict[str, Any] = {}
    for fld in dataclasses.fields(cls):
        if fld.name == "path":
            continue
        key_path = f"{prefix}{fld.name}"
        annotation = hints[fld.name]
        if dataclasses.is_dataclass(annotation):
            section = data.get(fld.name, {})
            if section is None:
                section = {}
            if not isinstance(section, dict):
                report(key_path, _("expected a mapping of keys, found {found}").format(found=_describe(section, False)))
                section = {}
            values[fld.name] = _build(annotation, section, key_path + ".", report, base_dir)  # type: ignore[arg-type]
            continue
        meta = fld.metadata
        if fld.name not in data:
            if meta.get("required"):
                report(key_path, _("required key is missing (expected {expected})").format(
                    expected=_expected_type(annotation)))
            continue
        ok, value = _coerce(data[fld.name], annotation)
        if not ok:
            report(key_path, _("expected {expected}, found {found}").format(
                expected=_expected_type(annotation), found=_describe(data[fld.name], meta["secret"])))
            continue
        check = meta.get("check")
        problem = check(value) if check is not None and value is not None else None
        if problem:
            report(key_path, _("expected {expected}, found {found}").format(
                expected=problem, found=_describe(data[fld.name], meta["secret"])))
            continue
        if meta.get("path") and isinstance(value, str) and value:
            value = str((base_dir / os.path.expanduser(value)).resolve()) if not os.path.isabs(value) else value
        values[fld.name] = value
    return cls(**values)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file. Raises ConfigError listing every problem."""
    file_path = Path(path)
    try:
        text = file_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([_("{path}: cannot read config: {reason}").format(path=file_path,
                                                                            reason=exc.strerror or exc)]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([_("{path}: config is not UTF-8 text ({reason} at byte {byte})").format(
            path=file_path, reason=exc.reason, byte=exc.start)]) from None
    try:
        data, lines = _compose_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file_path}:{mark.line + 1}" if mark is not None else str(file_path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([_("{where}: not valid YAML: {problem}").format(where=where, problem=problem)]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        found = _describe(data, False)
        raise ConfigError([_("{path}:1: expected a mapping of sections (device:, source:, ...), found {found}").format(
            path=file_path, found=found)])
    return config_from_mapping(data, file_path, lines)


def config_from_mapping(data: Mapping[str, Any], file_path: Path, lines: Mapping[str, int] | None = None) -> Config:
    """Validate an already-parsed mapping (the demo builds one in memory)."""
    problems: list[str] = []
    line_of = lines or {}

    def report(key_path: str, message: str) -> None:
        # An unknown or wrong key has its own line; a missing one points at its section.
        parent = key_path
        line = line_of.get(parent)
        while line is None and "." in parent:
            parent = parent.rsplit(".", 1)[0]
            line = line_of.get(parent)
        where = f"{file_path}:{line}" if line else str(file_path)
        problems.append(f"{where}: {key_path}: {message}")

    config = _build(Config, data, "", report, file_path.resolve().parent)
    if not problems:
        problems.extend(_cross_checks(config, file_path, line_of))
    if problems:
        raise ConfigError(problems)
    return dataclasses.replace(config, path=str(file_path.resolve()))


def _cross_checks(config: Config, file_path: Path, line_of: Mapping[str, int]) -> list[str]:
    problems = []

    def where(key_path: str) -> str:
        line = line_of.get(key_path)
        return f"{file_path}:{line}" if line else str(file_path)

    if config.source.token and config.source.token_file:
        problems.append(f"{where('source.token_file')}: source.token_file: "
                        + _("expected either token or token_file, found both"))
    if config.source.token_file:
        try:
            read_token_file(config.source.token_file)
        except OSError as exc:
            problems.append(f"{where('source.token_file')}: source.token_file: " + _(
                "expected a readable file, found {path} ({reason})").format(path=repr(config.source.token_file),
                                                                            reason=exc.strerror))
        except ValueError as exc:
            problems.append(f"{where('source.token_file')}: source.token_file: {config.source.token_file}: {exc}")
    storage_problem = storage_dir_problem(config.storage.dir)
    if storage_problem:
        problems.append(f"{where('storage.dir')}: storage.dir: {storage_problem}")
    if config.source.ca_file and not os.path.isfile(config.source.ca_file):
        problems.append(f"{where('source.ca_file')}: source.ca_file: " + _(
            "expected a CA bundle file, found {path} (no such file)").format(path=repr(config.source.ca_file)))
    return problems


def storage_dir_problem(directory: str) -> str | None:
    """A storage.dir others could write to would let them plant media or links: refused."""
    try:
        found = os.lstat(directory)
    except FileNotFoundError:
        return None  # created with mode 0750 at start
    except OSError as exc:
        return _("cannot inspect {path} ({reason})").format(path=directory, reason=exc.strerror)
    if stat.S_ISLNK(found.st_mode):
        target = os.path.realpath(directory)
        found = os.stat(target)
    if not stat.S_ISDIR(found.st_mode):
        return _("expected a directory, found {path} (not a directory)").format(path=repr(directory))
    if found.st_mode & 0o022:
        return _("expected a directory only its owner can write to, found {path} with mode {mode} "
                 "(chmod go-w {directory})").format(path=repr(directory), mode=f"{stat.S_IMODE(found.st_mode):04o}",
                                                    directory=directory)
    return None


def config_warnings(config: Config) -> list[str]:
    """Not errors, but a technician should know (check-config prints them; the agent logs them)."""
    warnings = []
    secret = bool(config.source.token or config.source.token_file)
    if secret and urlsplit(config.source.url).scheme == "http":
        warnings.append(f"{config.path}: source.url: "
                        + _("the device token would travel unencrypted over http:// (use https://)"))
    mqtt_urls = (config.mqtt.url,) if isinstance(config.mqtt.url, str) else (config.mqtt.url or ())
    if secret and any(urlsplit(url).scheme == "mqtt" for url in mqtt_urls):
        warnings.append(f"{config.path}: mqtt.url: "
                        + _("the device token is the MQTT password and would travel unencrypted over mqtt:// (use mqtts://)"))
    if not config.security.manifest_keys:
        warnings.append(f"{config.path}: security.manifest_keys: "
                        + _("empty, so unsigned manifests and commands are accepted (development only)"))
    return warnings


def describe_config(config: Config) -> dict[str, Any]:
    """The config as a plain mapping with secrets masked, for logs and `ctl status`."""
    def walk(obj: Any) -> Any:
        out: dict[str, Any] = {}
        for fld in dataclasses.fields(obj):
            value = getattr(obj, fld.name)
            if dataclasses.is_dataclass(value):
                out[fld.name] = walk(value)
            elif fld.metadata.get("secret") and value:
                out[fld.name] = "***"
            else:
                out[fld.name] = list(value) if isinstance(value, tuple) else value
        return out
    return walk(config)
