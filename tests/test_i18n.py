"""Vietnamese for technicians: the catalogue is complete and compiled, and the commands speak it under vi_VN."""

from __future__ import annotations

import gettext
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from agent.i18n import LOCALE_DIR, language
from tests.conftest import ROOT, ContentFolder, RunningAgent, base_manifest, wait_for, write_config

PO = LOCALE_DIR / "vi" / "LC_MESSAGES" / "bangtin-agent.po"
MO = PO.with_suffix(".mo")
VI = {"LANG": "vi_VN.UTF-8"}


def entries(text: str) -> dict[str, tuple[list[str], bool]]:
    """msgid → (its msgstr or msgstr[n] texts, fuzzy), from a --no-wrap .po/.pot."""
    found: dict[str, tuple[list[str], bool]] = {}
    for block in text.split("\n\n"):
        ids = re.findall(r'^msgid "(.*)"$', block, re.M)
        if not ids or ids[0] == "":
            continue
        strings = re.findall(r'^msgstr(?:\[\d+\])? "(.*)"$', block, re.M)
        found[json.loads(f'"{ids[0]}"')] = ([json.loads(f'"{s}"') for s in strings], "#, fuzzy" in block
                                            or re.search(r"^#,.*\bfuzzy\b", block, re.M) is not None)
    return found


def extracted(tmp_path: Path) -> set[str]:
    """What the sources mark, by the same rules as scripts/catalogue."""
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "agent").rglob("*.py"))
    subprocess.run(["xgettext", "--language=Python", "--from-code=UTF-8", "--keyword=_", "--keyword=N_",
                    "--keyword=ngettext:1,2", "--no-wrap", "-o", str(tmp_path / "py.pot"), *sources],
                   cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["xgettext", "--language=Shell", "--from-code=UTF-8", "--keyword=msg", "--keyword=say", "--no-wrap",
                    "-o", str(tmp_path / "sh.pot"), "scripts/install.sh"], cwd=ROOT, check=True, capture_output=True)
    return set(entries((tmp_path / "py.pot").read_text())) | set(entries((tmp_path / "sh.pot").read_text()))


def test_every_marked_message_is_translated_and_the_mo_is_fresh(tmp_path: Path) -> None:
    catalogue = entries(PO.read_text(encoding="utf-8"))
    marked = extracted(tmp_path)
    assert marked - set(catalogue) == set(), "messages without a translation: run ./scripts/catalogue and translate"
    assert set(catalogue) - marked == set(), "translations of messages no longer in the code: run ./scripts/catalogue"
    untranslated = [m for m, (strings, fuzzy) in catalogue.items() if fuzzy or not all(strings)]
    assert not untranslated, f"untranslated or fuzzy: {untranslated[:5]}"
    for message, (strings, _) in catalogue.items():  # placeholders survive translation
        assert set(re.findall(r"\{\w+\}|%s", message)) == set(re.findall(r"\{\w+\}|%s", strings[0])), message
    compiled = tmp_path / "fresh.mo"
    subprocess.run(["msgfmt", "--check", "-o", str(compiled), str(PO)], check=True, capture_output=True)
    with compiled.open("rb") as fresh, MO.open("rb") as shipped:
        assert gettext.GNUTranslations(fresh)._catalog == gettext.GNUTranslations(shipped)._catalog, \
            f"{MO.name} is older than {PO.name}: run ./scripts/catalogue"


def test_the_locale_decides_as_posix_says() -> None:
    assert language({"LANG": "vi_VN.UTF-8"}) == "vi" and language({"LANG": "vi_VN"}) == "vi"
    assert language({"LANG": "vi"}) == "vi" and language({"LC_MESSAGES": "vi_VN.utf8", "LANG": "C"}) == "vi"
    assert language({"LC_ALL": "C.UTF-8", "LANG": "vi_VN.UTF-8"}) == "en"  # LC_ALL wins
    assert language({"LANG": "en_US.UTF-8"}) == "en" and language({}) == "en"
    assert language({"LANG": "vim"}) == "en"


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG"))}
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**clean, **env})


def test_check_config_speaks_vietnamese_under_vi_vn(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("device:\n  id: Board One\nsource:\n  url: htp://x\n  poll_interval_s: 2\nmqtt:\n  urll: mqtt://b\n"
                    "display:\n  fullscreen: 'yes'\n")
    vi = run(["check-config", "--config", str(path)], VI)
    assert vi.returncode == 2
    assert vi.stderr.splitlines() == [
        f"{path}:2: device.id: cần 1-64 ký tự a-z, 0-9, '.', '_', '-', gặp 'Board One'",
        f"{path}:4: source.url: cần một địa chỉ https://, http:// hoặc file:///, gặp 'htp://x'",
        f"{path}:5: source.poll_interval_s: cần một số >= 10, gặp 2",
        f"{path}:7: mqtt.urll: khóa không có trong cấu hình; có phải là 'mqtt.url'?",
        f"{path}:9: display.fullscreen: cần true hoặc false, gặp 'yes'",
        f"5 lỗi trong {path}"]  # key names, file and line stay as they are
    english = run(["check-config", "--config", str(path)], {"LANG": "C.UTF-8"})
    assert f"{path}:5: source.poll_interval_s: expected a number >= 10, found 2" in english.stderr
    assert "5 problems in" in english.stderr
    overridden = run(["check-config", "--config", str(path)], {"LANG": "vi_VN.UTF-8", "LC_ALL": "C"})
    assert "expected a number >= 10" in overridden.stderr
    path.write_text(f"device: {{id: b1}}\nsource: {{url: 'file:///c'}}\nstorage: {{dir: {tmp_path / 's'}}}\n")
    ok = run(["check-config", "--config", str(path)], VI)
    assert ok.returncode == 0 and f"{path}: hợp lệ (thiết bị b1, nguồn file:///c)" in ok.stdout
    assert "cảnh báo: " in ok.stdout and "security.manifest_keys: để trống" in ok.stdout


def test_ctl_status_speaks_vietnamese_and_json_stays_as_it_is(tmp_path: Path, content_folder: ContentFolder,
                                                               public_key_b64: str,
                                                               agent_factory: Callable[[Path], RunningAgent]) -> None:
    content_folder.publish(base_manifest(1, items=[{"id": "a", "type": "text", "title": "Tin", "body": "Nội dung",
                                                    "duration_s": 30}]))
    config = write_config(tmp_path / "agent.yaml", content_folder.root, tmp_path / "state", [public_key_b64])
    agent = agent_factory(config).start()
    wait_for(lambda: agent.status()["current_item"] == "a", what="the item on screen")
    vi = run(["ctl", "--config", str(config), "status"], VI)
    assert vi.returncode == 0, vi.stderr
    lines = vi.stdout.splitlines()
    assert lines[0].startswith("thiết bị") and "vinhthuan-ubnd-01   phần mềm" in lines[0]
    assert any(line.startswith("đang hiển thị") and line.endswith(" a") for line in lines)
    assert any(line.startswith("màn hình") and line.endswith("bật (chế độ auto)") for line in lines)
    assert any(line.startswith("lỗi") and line.endswith("không có") for line in lines)
    english = run(["ctl", "--config", str(config), "status"], {"LANG": "C.UTF-8"})
    assert english.stdout.splitlines()[0].startswith("device ")
    as_json = json.loads(run(["ctl", "--config", str(config), "status", "--json"], VI).stdout)
    assert as_json["current_item"] == "a" and as_json["screen_on"] is True and "errors" in as_json
    report = run(["report", "--config", str(config)], VI)
    assert "số ngày hoạt động: 1 trên 1" in report.stdout and "lượt phát" in report.stdout
    assert agent.stop() == 0
    gone = run(["ctl", "--config", str(config), "status"], VI)
    assert gone.returncode == 1 and "không có phần mềm bảng tin nào trả lời tại" in gone.stderr


def test_install_sh_speaks_vietnamese_under_vi_vn(tmp_path: Path) -> None:
    env = {**os.environ, "LANG": "vi_VN.UTF-8", "BANGTIN_PREFIX": str(tmp_path / "opt"),
           "BANGTIN_ETC": str(tmp_path / "etc"), "BANGTIN_UNIT": str(tmp_path / "unit.service")}
    env.pop("LC_ALL", None)
    env.pop("LC_MESSAGES", None)
    result = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), "--dry-run"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "== gói hệ thống" in result.stdout and "Đã cài đặt. Tiếp theo:" in result.stdout
    assert f"  2. kiểm tra:  sudo bangtin-agent check-config --config {tmp_path}/etc/agent.yaml" in result.stdout
    bad = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), "--frobnicate"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "install.sh: không có tùy chọn --frobnicate" in bad.stderr


def test_the_wheel_carries_the_templates_fonts_and_catalogue(tmp_path: Path) -> None:
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("bangtin_agent-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("agent/templates/report.html.j2", "agent/templates/board.html.j2", "agent/templates/province.html.j2",
                   "agent/templates/base.html.j2", "agent/locale/vi/LC_MESSAGES/bangtin-agent.mo",
                   "agent/display/fonts/DejaVuSans.ttf", "agent/display/fonts/DejaVuSans-Bold.ttf"):
        assert needed in names, f"{needed} is not in {wheel.name}"
