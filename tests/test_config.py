"""Config loading: defaults, every problem reported with file:line, did-you-mean, secrets hidden."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.config import Config, ConfigError, describe_config, load_config
from tests.conftest import ROOT

EXAMPLE = ROOT / "config" / "agent.example.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_example_config_is_valid_and_shows_every_default() -> None:
    config = load_config(EXAMPLE)
    defaults = Config()
    example = yaml.safe_load(EXAMPLE.read_text())
    for section in dataclasses.fields(Config):
        if section.name == "path":
            continue
        for key in dataclasses.fields(getattr(defaults, section.name)):
            assert key.name in example[section.name], f"{section.name}.{key.name} missing from the example"
            if (section.name, key.name) in {("device", "id"), ("source", "url")}:
                continue  # the two required keys carry sample values
            expected = getattr(getattr(defaults, section.name), key.name)
            assert getattr(getattr(config, section.name), key.name) == expected, f"{section.name}.{key.name}"


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "device: {id: b1}\nsource: {url: 'file:///srv/c'}\n"))
    assert config.source.poll_interval_s == 300
    assert config.display.fps == 30
    assert config.security.manifest_keys == ()


def test_every_problem_is_reported_with_line_path_expected_and_found(tmp_path: Path) -> None:
    path = write(tmp_path, """\
device:
  id: Board One
source:
  url: htp://x
  poll_interval_s: 2
mqtt:
  urll: mqtt://broker:1883
  url: ftp://broker
display:
  fullscreen: "yes"
""")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = caught.value.problems
    assert f"{path}:2: device.id: expected 1-64 characters of a-z, 0-9, '.', '_', '-', found 'Board One'" in problems
    assert f"{path}:4: source.url: expected an https://, http:// or file:/// URL, found 'htp://x'" in problems
    assert f"{path}:5: source.poll_interval_s: expected a number >= 10, found 2" in problems
    assert f"{path}:7: mqtt.urll: unknown key; did you mean 'mqtt.url'?" in problems
    assert any(p.startswith(f"{path}:8: mqtt.url: expected mqtt:// or mqtts:// URL") for p in problems)
    assert f"{path}:10: display.fullscreen: expected true or false, found 'yes'" in problems
    assert len(problems) == 6


def test_unknown_section_and_missing_required(tmp_path: Path) -> None:
    path = write(tmp_path, "devcie:\n  id: b1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert f"{path}:1: devcie: unknown key; did you mean 'device'?" in text
    assert "device.id: required key is missing" in text
    assert "source.url: required key is missing" in text


def test_secret_token_is_never_printed(tmp_path: Path) -> None:
    secret = "s3cr3t-token-value"
    path = write(tmp_path, f"device: {{id: b1}}\nsource:\n  url: 'file:///c'\n  token: [{secret}]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert secret not in str(caught.value)
    assert "source.token: expected a string (or null), found a value (hidden)" in str(caught.value)
    ok = load_config(write(tmp_path, f"device: {{id: b1}}\nsource:\n  url: 'file:///c'\n  token: {secret}\n"))
    assert ok.token() == secret
    assert secret not in str(describe_config(ok))


def test_token_file_must_be_readable_and_exclusive(tmp_path: Path) -> None:
    path = write(tmp_path, "device: {id: b1}\nsource:\n  url: 'file:///c'\n  token: a\n  token_file: nothere\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any("expected either token or token_file, found both" in p for p in caught.value.problems)
    assert any("source.token_file: expected a readable file" in p for p in caught.value.problems)


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "device: {id: b1}\nsource: {url: 'file:///c'}\nstorage: {dir: state}\n"))
    assert config.storage.dir == str((tmp_path / "state").resolve())


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "device:\n  id: b1\n source: [\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems[0].startswith(f"{path}:3: not valid YAML")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_check_config_exit_codes(tmp_path: Path) -> None:
    good = run_cli("check-config", "--config", str(EXAMPLE))
    assert good.returncode == 0, good.stderr
    bad_path = write(tmp_path, "device: {id: b1}\nsource: {url: 'file:///c', token: 'hunter2'}\ndisplay: {fps: 0}\n")
    bad = run_cli("check-config", "--config", str(bad_path))
    assert bad.returncode == 2
    assert f"{bad_path}:3: display.fps: expected a number from 1 to 120, found 0" in bad.stderr
    assert "hunter2" not in bad.stderr + bad.stdout


def test_run_refuses_a_bad_config_before_starting(tmp_path: Path) -> None:
    bad_path = write(tmp_path, "device: {id: b1}\nsource: {url: 'file:///c'}\nstorage: {dirr: /tmp/x}\n")
    result = run_cli("run", "--config", str(bad_path))
    assert result.returncode == 2
    assert "storage.dirr: unknown key; did you mean 'storage.dir'?" in result.stderr
    missing = run_cli("run", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read config" in missing.stderr
