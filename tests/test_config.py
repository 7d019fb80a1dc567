"""Config loading: defaults, every problem reported with file:line, did-you-mean, secrets hidden."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.config import Config, ConfigError, config_value, describe_config, leaf_keys, load_config
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
    for key_path in leaf_keys():
        *sections, name = key_path.split(".")
        node = example
        for section in sections:
            node = node[section]
        assert name in node, f"{key_path} missing from the example"
        if key_path in {"device.id", "source.url"}:
            continue  # the two keys a board must have carry sample values
        assert config_value(config, key_path) == config_value(defaults, key_path), key_path
    assert config.explicit == frozenset(leaf_keys())


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


def test_unknown_section_is_an_error_and_missing_identity_is_enrolment(tmp_path: Path) -> None:
    path = write(tmp_path, "devcie:\n  id: b1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}:1: devcie: unknown key; did you mean 'device'?"
    empty = load_config(write(tmp_path, ""))
    assert not empty.enrolled and empty.missing_for_enrolment() == ["device.id", "source.url"]
    half = load_config(write(tmp_path, "device: {id: b1}\n"))
    assert half.missing_for_enrolment() == ["source.url"]
    result = run_cli("check-config", "--config", str(path.parent / "agent.yaml"))
    assert result.returncode == 0, result.stderr
    assert "not enrolled (source.url not set)" in result.stdout
    assert "security.provision_keys: empty, so no provisioning bundle can enrol this board" in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_dropin_the_service_wrote_is_refused_unless_it_is_the_bundles(tmp_path: Path) -> None:
    """On a board agent.d is the service's to write, for the bundle's drop-in only: a file the
    service made itself (a compromised agent) must not set the source or keys for good."""
    path = write(tmp_path, "device: {id: b1}\nsource: {url: 'file:///c'}\n")
    dropins = tmp_path / "agent.d"
    dropins.mkdir()
    planted = dropins / "05-mine.yaml"
    planted.write_text("source:\n  url: https://attacker.example/api\n")
    os.chown(planted, 4321, 4321)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"{planted}: owned by uid 4321, not by root or the owner of {path}" in str(caught.value)
    planted.rename(dropins / "50-provision.yaml")  # the bundle's own drop-in, written by the service
    assert load_config(path).source.url == "https://attacker.example/api"


def test_dropins_merge_over_the_main_file_and_name_their_own_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "device: {id: b1, groups: [a]}\nsource: {url: 'file:///c', poll_interval_s: 60}\n")
    dropins = tmp_path / "agent.d"
    dropins.mkdir()
    (dropins / "50-provision.yaml").write_text("source:\n  url: https://tttn.example/api\n")
    (dropins / "60-local.yaml").write_text("display:\n  fps: 12\n")
    (dropins / "notes.txt").write_text("not read: not *.yaml")
    (dropins / ".50-provision.yaml.new").write_text("half written: {")
    config = load_config(path)
    assert config.source.url == "https://tttn.example/api"
    assert config.source.poll_interval_s == 60 and config.device.groups == ("a",)  # the rest of the section stays
    assert config.display.fps == 12
    assert config.dropins == (str(dropins / "50-provision.yaml"), str(dropins / "60-local.yaml"))
    assert {"source.url", "source.poll_interval_s", "display.fps", "device.id"} <= config.explicit
    assert "report.heartbeat_interval_s" not in config.explicit
    (dropins / "60-local.yaml").write_text("display:\n  fps: 0\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [f"{dropins / '60-local.yaml'}:2: display.fps: expected a number from 1 to 120, "
                                     "found 0"]
    (dropins / "60-local.yaml").write_text("display:\n  fps: 12\n")
    (dropins / "60-local.yaml").chmod(0o666)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "others may change this config drop-in (mode 0666" in caught.value.problems[0]


def test_download_windows_and_log_level_are_checked(tmp_path: Path) -> None:
    base = "device: {id: b1}\nsource: {url: 'file:///c'}\n"
    config = load_config(write(tmp_path, base + "downloads: {windows: [['23:00', '05:00']], small_mb: 0.5}\n"
                                                "log_level: DEBUG\n"))
    assert config.downloads.windows == (("23:00", "05:00"),) and config.downloads.small_mb == 0.5
    assert config.log_level == "DEBUG"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, base + "downloads: {windows: [['25:00', '05:00']]}\nlog_level: LOUD\n"))
    assert len(caught.value.problems) == 2
    assert (':3: downloads.windows: expected ["HH:MM", "HH:MM"] windows of local time, 00:00-23:59; an end before '
            'its start wraps past midnight (window 1 is ["25:00", "05:00"])') in caught.value.problems[0]
    assert caught.value.problems[1].endswith("log_level: expected one of DEBUG, INFO, WARNING, ERROR, found 'LOUD'")
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, base + "downloads:\n  windows: [['23:00', '05:00'], ['12:00', '12:00']]\n"
                                           "  small_mb: -1\n"))
    assert [problem.split(": ", 1)[1] for problem in caught.value.problems] == [
        'downloads.windows: expected windows whose start and end differ (window 2 is ["12:00", "12:00"]; '
        "for any time of day leave the list empty), found a list",
        "downloads.small_mb: expected a number >= 0, found -1"]
    assert caught.value.problems[0].startswith(f"{tmp_path / 'agent.yaml'}:4: ")


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


def test_a_dropin_that_is_a_dangling_link_or_a_fifo_is_a_clear_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "device: {id: b1}\nsource: {url: 'file:///c'}\n")
    dropins = tmp_path / "agent.d"
    dropins.mkdir()
    (dropins / "20-gone.yaml").symlink_to(tmp_path / "nowhere.yaml")
    os.mkfifo(dropins / "30-fifo.yaml")  # opening it to read would wait for a writer for ever
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [f"{dropins / '20-gone.yaml'}: cannot read config: No such file or directory",
                                     f"{dropins / '30-fifo.yaml'}: not a regular file"]
    (dropins / "20-gone.yaml").unlink()
    (dropins / "30-fifo.yaml").unlink()
    (tmp_path / "shared.yaml").write_text("display: {fps: 10}\n")
    (dropins / "20-shared.yaml").symlink_to(tmp_path / "shared.yaml")  # a link to a real file is fine
    assert load_config(path).display.fps == 10
