"""The config file (AGENT.md): schema declared once, here, as frozen dataclasses.

Each field's default, checks and secrecy live in its `field(metadata=...)`; the loader walks the
dataclasses, so adding a key is one line. Every problem is collected (not just the first) and
reported as `file:line: key.path: expected X, found Y`, with a did-you-mean for unknown keys.
Secrets are never echoed.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import stat
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent import configchecks as checks
from agent.configchecks import Check, read_token_file, storage_dir_problem
from agent.configfiles import (  # ConfigError is also this module's: every caller catches it from here
    BUNDLE_DROPIN,
    ConfigError,
    describe_value,
    dropin_dir,
    dropin_files,
    merge,
    read_yaml_file,
)
from agent.i18n import N_, _


def setting(default: Any, *, check: Check | None = None, secret: bool = False, enrols: bool = False,
            path: bool = False) -> Any:
    """A config key: its default, an extra check, whether it is secret, a filesystem path, and
    whether a board without it is not enrolled yet (it shows its enrolment screen, PROTOCOL.md §12)."""
    meta = {"check": check, "secret": secret, "enrols": enrols, "path": path}
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DeviceConfig:
    id: str = setting("", check=checks.device_id, enrols=True)
    groups: tuple[str, ...] = setting((), check=checks.groups)


@dataclass(frozen=True)
class SourceConfig:
    url: str = setting("", check=checks.source_url, enrols=True)
    token: str | None = setting(None, secret=True, check=checks.token_text)
    token_file: str | None = setting(None, path=True)
    poll_interval_s: int = setting(300, check=checks.at_least(10))
    ca_file: str | None = setting(None, path=True)


@dataclass(frozen=True)
class SecurityConfig:
    manifest_keys: tuple[str, ...] = setting((), check=checks.keys)
    release_keys: tuple[str, ...] = setting((), check=checks.keys)  # agent releases (§11); empty = no self-update
    provision_keys: tuple[str, ...] = setting((), check=checks.keys)  # provisioning bundles (§12); empty = none taken


@dataclass(frozen=True)
class MqttConfig:
    url: str | tuple[str, ...] | None = setting(None, check=checks.mqtt_urls)
    topic_prefix: str = setting("bangtin")
    keepalive_s: int = setting(60, check=checks.in_range(5, 3600))
    ca_file: str | None = setting(None, path=True)


@dataclass(frozen=True)
class ReportConfig:
    # Every 10 minutes, the records with the heartbeat, riding on every other manifest poll: measured
    # over TLS, a heartbeat a minute and uploads every 30 s cost 155 MB a month on a SIM, these 38 MB
    # (docs/metered.md, bench/bench_report.py).
    heartbeat_interval_s: int = setting(600, check=checks.at_least(10))
    upload_interval_s: int = setting(600, check=checks.at_least(1))
    batch_size: int = setting(200, check=checks.in_range(1, 5000))
    outbox_max_records: int = setting(90 * 24 * 360, check=checks.at_least(1000))  # 90 days of 10-second items
    journal_days: int = setting(400, check=checks.in_range(1, 3650))


@dataclass(frozen=True)
class StorageConfig:
    dir: str = setting("/var/lib/bangtin", path=True)
    cache_max_mb: int = setting(2048, check=checks.at_least(16))


@dataclass(frozen=True)
class DisplayConfig:
    width: int = setting(1920, check=checks.in_range(160, 8192))
    height: int = setting(1080, check=checks.in_range(120, 8192))
    fullscreen: bool = setting(True)
    fps: int = setting(30, check=checks.in_range(1, 120))
    crossfade_ms: int = setting(0, check=checks.in_range(0, 2000))
    splash_title: str = setting("BẢNG TIN ĐIỆN TỬ")
    power_on_command: str | None = setting("auto")  # "auto": HDMI-CEC via cec-ctl when installed; null: none
    power_off_command: str | None = setting("auto")


@dataclass(frozen=True)
class UpdateConfig:
    health_s: int = setting(120, check=checks.in_range(30, 3600))  # a new release must show content this long


@dataclass(frozen=True)
class DownloadsConfig:
    # Large media wait for these local windows (a night tariff); empty = any time. Media up to
    # `small_mb`, and every emergency item's media, download at once whatever the window.
    windows: tuple[tuple[str, str], ...] = setting((), check=checks.windows)
    small_mb: float = setting(2.0, check=checks.at_least(0))


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
    update: UpdateConfig = field(default_factory=UpdateConfig)
    downloads: DownloadsConfig = field(default_factory=DownloadsConfig)
    log_level: str = setting("INFO", check=checks.log_level)
    path: str = ""  # the file it came from, for messages and `ctl --config`
    dropins: tuple[str, ...] = ()  # the agent.d/*.yaml files merged over it, in order
    explicit: frozenset[str] = frozenset()  # key paths the files set (they win over remote settings)

    @property
    def enrolled(self) -> bool:
        """Both device.id and source.url are set: a board that knows who it is and where to sync."""
        return not self.missing_for_enrolment()

    def missing_for_enrolment(self) -> list[str]:
        return [key for key, value in (("device.id", self.device.id), ("source.url", self.source.url)) if not value]

    def token(self) -> str | None:
        """The device token, from `source.token` or `source.token_file` (checked by check-config)."""
        if self.source.token:
            return self.source.token
        if self.source.token_file:
            return read_token_file(self.source.token_file) or None
        return None


# --- loading ------------------------------------------------------------------------------


NOT_KEYS = frozenset({"path", "dropins", "explicit"})  # Config fields that are not read from the file


def _expected_type(annotation: Any) -> str:
    names = {int: N_("an integer"), float: N_("a number"), bool: N_("true or false"), str: N_("a string")}
    if annotation in names:
        return _(names[annotation])
    if typing.get_origin(annotation) is tuple:
        return _("a list of windows") if typing.get_args(annotation)[0] is not str else _("a list of strings")
    args = typing.get_args(annotation)
    parts = [_expected_type(a) if a is not type(None) else "null" for a in args]
    return _(" or ").join(dict.fromkeys(p for p in parts if p != "null")) + (_(" (or null)") if type(None) in args else "")


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
        if typing.get_args(annotation)[0] is str:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            return ok, tuple(value) if ok else value
        # a list of [start, end] windows
        ok = isinstance(value, list) and all(isinstance(w, list) and all(isinstance(v, str) for v in w) for w in value)
        return ok, tuple(tuple(w) for w in value) if ok else value
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


def _schema_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.name not in NOT_KEYS]


def _all_key_paths(cls: type = Config, prefix: str = "", *, leaves_only: bool = False) -> list[str]:
    paths = []
    hints = typing.get_type_hints(cls)
    for fld in _schema_fields(cls):
        key_path = f"{prefix}{fld.name}"
        if dataclasses.is_dataclass(hints[fld.name]):
            if not leaves_only:
                paths.append(key_path)
            paths.extend(_all_key_paths(hints[fld.name], key_path + ".", leaves_only=leaves_only))
        else:
            paths.append(key_path)
    return paths


def leaf_keys() -> list[str]:
    """Every key path a config file can set (`display.fps`, `log_level`, ...)."""
    return _all_key_paths(leaves_only=True)


def key_annotation(key_path: str) -> tuple[Any, Any]:
    """(the type, the field) of a leaf key path such as `display.fps`; KeyError when there is none."""
    cls: Any = Config
    *sections, name = key_path.split(".")
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
        if not dataclasses.is_dataclass(cls):
            raise KeyError(key_path)
    fields = {f.name: f for f in _schema_fields(cls)}
    if name not in fields or dataclasses.is_dataclass(typing.get_type_hints(cls)[name]):
        raise KeyError(key_path)
    return typing.get_type_hints(cls)[name], fields[name]


def check_value(key_path: str, raw: Any) -> tuple[Any, str | None]:
    """(the value as the config holds it, None) or (None, what was wrong) for one leaf key: the same
    rules a config file is held to (remote settings go through here too)."""
    annotation, fld = key_annotation(key_path)
    ok, value = _coerce(raw, annotation)
    secret = fld.metadata["secret"]
    if not ok:
        return None, _("expected {expected}, found {found}").format(expected=_expected_type(annotation),
                                                                   found=describe_value(raw, secret))
    check = fld.metadata.get("check")
    problem = check(value) if check is not None and value is not None else None
    if problem:
        return None, _("expected {expected}, found {found}").format(expected=problem, found=describe_value(raw, secret))
    return value, None


def _build(cls: type, data: Mapping[str, Any], prefix: str, report: Callable[[str, str], None],
           base_dir: Callable[[str], Path]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in _schema_fields(cls)}
    all_paths = _all_key_paths()
    for key in data:
        if not isinstance(key, str):
            report(f"{prefix}{describe_value(key, False)}", _("expected a key name, found a key that is not text"))
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
    for fld in _schema_fields(cls):
        key_path = f"{prefix}{fld.name}"
        annotation = hints[fld.name]
        if dataclasses.is_dataclass(annotation):
            section = data.get(fld.name, {})
            if section is None:
                section = {}
            if not isinstance(section, dict):
                report(key_path, _("expected a mapping of keys, found {found}").format(found=describe_value(section, False)))
                section = {}
            values[fld.name] = _build(annotation, section, key_path + ".", report, base_dir)  # type: ignore[arg-type]
            continue
        if fld.name not in data:
            continue
        value, problem = check_value(key_path, data[fld.name])
        if problem:
            report(key_path, problem)
            continue
        if fld.metadata.get("path") and isinstance(value, str) and value:
            value = str((base_dir(key_path) / os.path.expanduser(value)).resolve()) if not os.path.isabs(value) else value
        values[fld.name] = value
    return cls(**values)


Origins = dict[str, tuple[Path, int]]  # key path → (file, line) where it was last set


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file and its drop-ins. Raises ConfigError listing every problem."""
    return load_config_with(path)


def load_config_with(path: str | os.PathLike[str], replacing: str | None = None,
                     overlay: Mapping[str, Any] | None = None, overlay_origin: Path | None = None) -> Config:
    """The config as it would be with the drop-in named `replacing` holding `overlay` (a
    provisioning bundle is checked this way before anything is written); messages about the
    overlay's keys name `overlay_origin`."""
    file_path = Path(path)
    data, lines = read_yaml_file(file_path)
    origins: Origins = {key: (file_path, line) for key, line in lines.items()}
    dropins = dropin_files(file_path)
    main_owner = os.stat(file_path).st_uid
    if replacing is not None:
        dropins = sorted({*(p for p in dropins if p.name != replacing), dropin_dir(file_path) / replacing})
    problems = []
    for dropin in dropins:
        if replacing is not None and dropin.name == replacing:
            data = merge(data, overlay or {})
            origins.update({key: (overlay_origin or dropin, 0) for key in _key_paths_in(overlay or {})})
            continue
        try:
            mode = os.stat(dropin).st_mode  # a link is followed: a technician may link a shared file in
        except OSError as exc:
            problems.append(_("{path}: cannot read config: {reason}").format(path=dropin, reason=exc.strerror or exc))
            continue
        if not stat.S_ISREG(mode):
            problems.append(_("{path}: not a regular file").format(path=dropin))  # a FIFO would hang every reader
            continue
        if mode & 0o022:
            problems.append(_("{path}: others may change this config drop-in (mode {mode}; chmod go-w {path})").format(
                path=dropin, mode=f"{stat.S_IMODE(mode):04o}"))
            continue
        owner = os.stat(dropin).st_uid
        if dropin.name != BUNDLE_DROPIN and owner not in (0, main_owner):
            # The service may write agent.d, but only the bundle's drop-in (a signed bundle put it
            # there): a file of its own making must not set the board's source or keys for good.
            problems.append(_("{path}: owned by uid {uid}, not by root or the owner of {config}; only the "
                              "provisioning bundle's {bundle} may be the service's").format(
                path=dropin, uid=owner, config=file_path, bundle=BUNDLE_DROPIN))
            continue
        layer, layer_lines = read_yaml_file(dropin)
        data = merge(data, layer)
        origins.update({key: (dropin, line) for key, line in layer_lines.items()})
    if problems:
        raise ConfigError(problems)
    config = config_from_mapping(data, file_path, origins)
    return dataclasses.replace(config, dropins=tuple(str(p) for p in dropins))


def _key_paths_in(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every key path in a parsed mapping, sections included (`source`, `source.url`)."""
    found = []
    for key, value in data.items():
        key_path = f"{prefix}{key}"
        found.append(key_path)
        if isinstance(value, dict):
            found.extend(_key_paths_in(value, key_path + "."))
    return found


def _explicit_keys(data: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(_key_paths_in(data)) & frozenset(_all_key_paths(leaves_only=True))


def config_from_mapping(data: Mapping[str, Any], file_path: Path,
                        origins: Mapping[str, tuple[Path, int]] | None = None, *, on_this_machine: bool = True) -> Config:
    """Validate an already-parsed mapping (the demo builds one in memory). `origins` says where each
    key path was written, for messages; keys without one are reported against `file_path`."""
    problems: list[str] = []
    origin_of = origins or {}

    def where(key_path: str) -> str:
        # An unknown or wrong key has its own line; a missing one points at its section.
        parent = key_path
        origin = origin_of.get(parent)
        while origin is None and "." in parent:
            parent = parent.rsplit(".", 1)[0]
            origin = origin_of.get(parent)
        if origin is None:
            return str(file_path)
        return f"{origin[0]}:{origin[1]}" if origin[1] else str(origin[0])  # line 0: not from a file's text

    def report(key_path: str, message: str) -> None:
        problems.append(f"{where(key_path)}: {key_path}: {message}")

    def base_dir(key_path: str) -> Path:
        origin = origin_of.get(key_path)
        return (origin[0] if origin else file_path).resolve().parent

    config = _build(Config, data, "", report, base_dir)
    if not problems and on_this_machine:  # files named in it exist here (not so for a bundle made for a board)
        problems.extend(_cross_checks(config, where))
    if problems:
        raise ConfigError(problems)
    return dataclasses.replace(config, path=str(file_path.resolve()), explicit=_explicit_keys(data))


def _cross_checks(config: Config, where: Callable[[str], str]) -> list[str]:
    problems = []
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
    missing = config.missing_for_enrolment()
    if missing:
        warnings.append(f"{config.path}: " + _("not enrolled ({keys} not set): the board shows its enrolment screen "
                                              "and waits for a provisioning bundle (docs/provisioning.md)").format(
                                                  keys=", ".join(missing)))
        if not config.security.provision_keys:
            warnings.append(f"{config.path}: security.provision_keys: "
                            + _("empty, so no provisioning bundle can enrol this board (install.sh --province-key KEY)"))
    if not config.security.manifest_keys:
        warnings.append(f"{config.path}: security.manifest_keys: "
                        + _("empty, so unsigned manifests and commands are accepted (development only)"))
    return warnings


def describe_config(config: Config) -> dict[str, Any]:
    """The config as a plain mapping with secrets masked, for logs and `ctl status`."""
    def walk(obj: Any) -> Any:
        out: dict[str, Any] = {}
        for fld in _schema_fields(type(obj)):
            value = getattr(obj, fld.name)
            if dataclasses.is_dataclass(value):
                out[fld.name] = walk(value)
            elif fld.metadata.get("secret") and value:
                out[fld.name] = "***"
            else:
                out[fld.name] = _plain(value)
        return out
    return walk(config)


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def config_value(config: Config, key_path: str) -> Any:
    node: Any = config
    for part in key_path.split("."):
        node = getattr(node, part)
    return node


def with_value(config: Config, key_path: str, value: Any) -> Config:
    """A copy of `config` with one leaf key replaced (frozen dataclasses all the way down)."""
    head, _, rest = key_path.partition(".")
    if not rest:
        return dataclasses.replace(config, **{head: value})
    return dataclasses.replace(config, **{head: _with_nested(getattr(config, head), rest, value)})


def _with_nested(node: Any, key_path: str, value: Any) -> Any:
    head, _, rest = key_path.partition(".")
    if not rest:
        return dataclasses.replace(node, **{head: value})
    return dataclasses.replace(node, **{head: _with_nested(getattr(node, head), rest, value)})
