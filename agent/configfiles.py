"""The config's files on disk: `agent.yaml` and its drop-ins (`agent.d/*.yaml`, merged in name
order), read as YAML with the line of every key kept for messages. What the keys mean is
agent/config.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from agent.i18n import _
from agent.limits import show_value

BUNDLE_DROPIN = "50-provision.yaml"  # the drop-in a provisioning bundle writes (agent/bundle.py)


class ConfigError(Exception):
    """Every problem found in a config file, one message per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _LineLoader(yaml.SafeLoader):
    """Remembers the line of every mapping key so messages can point at it."""


def compose_lines(text: str) -> tuple[Any, dict[str, int]]:
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


def describe_value(value: Any, secret: bool) -> str:
    if secret:
        return _("a value (hidden)")
    if value is None:
        return _("nothing (null)")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return _("a mapping") if isinstance(value, dict) else _("a list")
    return show_value(value)


def dropin_dir(config_path: str | os.PathLike[str]) -> Path:
    """`agent.yaml` → `agent.d/` beside it: files merged over the main one, in name order (the
    provisioning bundle writes one, so the technician's own file and its comments stay untouched)."""
    path = Path(config_path)
    return path.parent / f"{path.stem}.d"


def dropin_files(config_path: str | os.PathLike[str]) -> list[Path]:
    folder = dropin_dir(config_path)
    try:
        return sorted(p for p in folder.iterdir() if p.suffix == ".yaml" and not p.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise ConfigError([_("{path}: cannot list config drop-ins: {reason}").format(
            path=folder, reason=exc.strerror or exc)]) from None


def read_yaml_file(file_path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    try:
        text = file_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([_("{path}: cannot read config: {reason}").format(path=file_path,
                                                                            reason=exc.strerror or exc)]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([_("{path}: config is not UTF-8 text ({reason} at byte {byte})").format(
            path=file_path, reason=exc.reason, byte=exc.start)]) from None
    try:
        data, lines = compose_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file_path}:{mark.line + 1}" if mark is not None else str(file_path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([_("{where}: not valid YAML: {problem}").format(where=where, problem=problem)]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        found = describe_value(data, False)
        raise ConfigError([_("{path}:1: expected a mapping of sections (device:, source:, ...), found {found}").format(
            path=file_path, found=found)])
    return data, lines


def merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged
