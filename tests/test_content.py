"""The verified cache, the persisted manifest and the watched `file://` folder (no display needed)."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cache.store import MediaError, MediaStore
from agent.content import Content
from agent.envelope import load_trusted_keys
from agent.health import Problems
from agent.sync.filesource import FileSource
from tests.conftest import VECTORS, ContentFolder, base_manifest, media_entry, wait_for, write_png


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_store_verifies_before_the_file_becomes_visible(tmp_path: Path) -> None:
    store = MediaStore(tmp_path / "media")
    store.open()
    data = b"x" * 1000
    with pytest.raises(MediaError, match=r"SHA-256 .* does not match"):
        store.import_stream(io.BytesIO(b"y" * 1000), sha(data), 1000, "media m1")
    with pytest.raises(MediaError, match="larger than the declared 999 bytes"):
        store.import_stream(io.BytesIO(data), sha(data), 999, "media m1")
    with pytest.raises(MediaError, match="1000 bytes, the manifest declares 1001"):
        store.import_stream(io.BytesIO(data), sha(data), 1001, "media m1")
    assert store.path_for(sha(data)) is None
    assert not (tmp_path / "media" / sha(data)).exists()
    assert list((tmp_path / "media" / "partial").iterdir()) == []
    store.import_stream(io.BytesIO(data), sha(data), 1000, "media m1")
    path = store.path_for(sha(data))
    assert path is not None and Path(path).read_bytes() == data


def test_corrupt_cached_file_is_removed_on_restart(tmp_path: Path) -> None:
    data = (VECTORS / "media" / "lich-tiem-chung.png").read_bytes()
    store = MediaStore(tmp_path / "media")
    store.open()
    store.import_stream(io.BytesIO(data), sha(data), len(data), "m1")
    cached = tmp_path / "media" / sha(data)
    cached.write_bytes(data[:-10] + b"0123456789")  # bit rot / torn write from an older version
    fresh = MediaStore(tmp_path / "media")
    fresh.open()
    assert fresh.verify_existing([(sha(data), len(data))]) == [sha(data)]
    assert fresh.path_for(sha(data)) is None and not cached.exists()


class Harness:
    """Content + store + FileSource as main.py wires them, without a display."""

    def __init__(self, tmp_path: Path, folder: ContentFolder, keys: list[str], cache_limit: int = 1 << 30) -> None:
        self.on_screen: set[str] = set()
        self.problems = Problems()
        self.store = MediaStore(tmp_path / "state" / "media")
        self.store.open()
        self.content = Content(tmp_path / "state", self.store, self.problems, keys=load_trusted_keys(keys),
                               device_id="vinhthuan-ubnd-01", groups=["angiang"])
        self.stop = threading.Event()
        self.changes = 0
        self.source = FileSource(folder.root, self.content, self.store, self.problems, self.stop, self._changed,
                                 cache_limit_bytes=cache_limit, on_screen=lambda: self.on_screen)

    def _changed(self) -> None:
        self.changes += 1

    def serial(self) -> int | None:
        manifest = self.content.current()
        return manifest.serial if manifest else None


@pytest.fixture
def harness(tmp_path: Path, content_folder: ContentFolder, public_key_b64: str) -> Iterator[Harness]:
    h = Harness(tmp_path, content_folder, [public_key_b64])
    yield h
    h.stop.set()
    h.source.join(5)


def publish_with_image(folder: ContentFolder, serial: int, colour: tuple[int, int, int] = (200, 0, 0)) -> str:
    png = write_png(folder.root / "media" / f"img{serial}.png", (64, 36), colour)
    entry = media_entry(png, "m1", "image/png")
    folder.publish(base_manifest(serial, media=[entry],
                                 items=[{"id": "i1", "type": "image", "media": "m1", "duration_s": 5}]))
    return str(entry["sha256"])


def test_vector_folder_is_accepted_with_its_media(tmp_path: Path, public_key_b64: str) -> None:
    folder = ContentFolder(tmp_path / "vec", None)  # type: ignore[arg-type]
    (folder.root / "manifest.json").write_bytes((VECTORS / "manifest.signed.json").read_bytes())
    (folder.root / "media" / "lich-tiem-chung.png").write_bytes((VECTORS / "media" / "lich-tiem-chung.png").read_bytes())
    h = Harness(tmp_path, folder, [public_key_b64])
    h.source.check()
    assert h.serial() == 42
    assert h.store.path_for("9060fbfb0f1b73fe215046ca3dbca33cbe94c19541687f05a55a8c179c066540") is not None
    assert h.problems.current() == []


def test_folder_changes_apply_within_two_seconds(harness: Harness, content_folder: ContentFolder) -> None:
    first_sha = publish_with_image(content_folder, 1)
    harness.source.start()
    wait_for(lambda: harness.serial() == 1, timeout=5, what="serial 1")
    assert harness.store.path_for(first_sha) is not None
    second_sha = publish_with_image(content_folder, 2, (0, 200, 0))
    wait_for(lambda: harness.serial() == 2, timeout=2.0, what="serial 2 within 2 s of the change")
    assert harness.store.path_for(second_sha) is not None  # media verified before the switch


def test_broken_or_rolled_back_manifest_keeps_the_old_one(harness: Harness, content_folder: ContentFolder) -> None:
    publish_with_image(content_folder, 5)
    harness.source.start()
    wait_for(lambda: harness.serial() == 5, what="serial 5")
    content_folder.write_raw(b'{"payloadType": "application/vnd.bangtin.manifest+json", "payload": ')
    wait_for(lambda: any("not valid JSON" in e for e in harness.problems.current()), timeout=3, what="JSON error")
    assert harness.serial() == 5
    publish_with_image(content_folder, 4)
    wait_for(lambda: any("rollback refused" in e for e in harness.problems.current()), timeout=3, what="rollback")
    tampered = json.loads((VECTORS / "manifest.tampered.json").read_text())
    content_folder.write_raw(json.dumps(tampered).encode())
    wait_for(lambda: any("signature not valid" in e for e in harness.problems.current()), timeout=3, what="signature")
    content_folder.publish(base_manifest(9), signed=False)
    wait_for(lambda: any("unsigned document refused" in e for e in harness.problems.current()), timeout=3,
             what="unsigned refused")
    assert harness.serial() == 5
    publish_with_image(content_folder, 6)
    wait_for(lambda: harness.serial() == 6, timeout=3, what="recovery with serial 6")
    assert not any("rejected" in e for e in harness.problems.current())


def test_missing_or_wrong_media_is_reported_and_never_verified(harness: Harness, content_folder: ContentFolder) -> None:
    good = write_png(content_folder.root / "media" / "good.png", (8, 8), (1, 2, 3))
    bad = write_png(content_folder.root / "media" / "bad.png", (8, 8), (4, 5, 6))
    bad_entry = media_entry(bad, "m2", "image/png")
    bad.write_bytes(bad.read_bytes() + b"tampered")  # the file no longer matches its manifest entry
    content_folder.publish(base_manifest(
        1,
        media=[media_entry(good, "m1", "image/png"), bad_entry,
               {**media_entry(good, "m3", "image/png"), "url": "media/absent.png", "sha256": "3" * 64},
               {**media_entry(good, "m4", "image/png"), "url": "https://cdn.example/x.png", "sha256": "4" * 64}],
        items=[{"id": f"i{n}", "type": "image", "media": f"m{n}", "duration_s": 5} for n in (1, 2, 3, 4)],
    ))
    harness.source.check()
    assert harness.serial() == 1
    errors = "\n".join(harness.problems.current())
    assert "media m2 (media/bad.png): larger than the declared" in errors
    assert "media m3: media/absent.png not found" in errors
    assert "media m4: 'https://cdn.example/x.png' is not a path inside the folder" in errors
    assert harness.store.path_for(str(bad_entry["sha256"])) is None


def test_links_out_of_the_folder_are_refused(harness: Harness, content_folder: ContentFolder, tmp_path: Path) -> None:
    outside = write_png(tmp_path / "elsewhere" / "secret.png", (4, 4), (9, 9, 9))
    (content_folder.root / "media" / "link.png").symlink_to(outside)  # the file itself a link
    (content_folder.root / "away").symlink_to(outside.parent)  # a folder on the way leads out
    linked = {**media_entry(outside, "m1", "image/png"), "url": "media/link.png"}
    away = {**media_entry(outside, "m2", "image/png"), "url": "away/secret.png"}
    content_folder.publish(base_manifest(1, media=[linked, away], items=[
        {"id": "i1", "type": "image", "media": "m1", "duration_s": 5},
        {"id": "i2", "type": "image", "media": "m2", "duration_s": 5}]))
    harness.source.check()
    errors = "\n".join(harness.problems.current())
    assert "media m1: cannot read media/link.png: it is a link; only regular files are read" in errors
    assert "media m2: 'away/secret.png' leads outside" in errors
    assert harness.store.path_for(str(linked["sha256"])) is None


def test_accepted_manifest_survives_restart_and_rollback_stays_refused(
        tmp_path: Path, content_folder: ContentFolder, public_key_b64: str) -> None:
    first = Harness(tmp_path, content_folder, [public_key_b64])
    image_sha = publish_with_image(content_folder, 7)
    first.source.check()
    assert first.serial() == 7
    # Next boot: the folder is gone (USB stick removed), the stored manifest and cache play at once.
    for path in sorted(content_folder.root.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    second = Harness(tmp_path, content_folder, [public_key_b64])
    restored = second.content.restore()
    assert restored is not None and restored.serial == 7
    assert second.store.path_for(image_sha) is None  # not trusted before it is hashed again
    second.content.verify_cached(restored.media)
    assert second.store.path_for(image_sha) is not None
    (content_folder.root / "media").mkdir(parents=True)
    publish_with_image(content_folder, 6)
    second.source.check()
    assert second.serial() == 7
    assert any("serial 6 is lower than the accepted 7" in e for e in second.problems.current())


def test_problems_of_withdrawn_media_go_with_the_manifest(harness: Harness, content_folder: ContentFolder) -> None:
    content_folder.publish(base_manifest(1, media=[{"id": "gone", "url": "media/absent.png", "sha256": "5" * 64,
                                                    "size": 10, "type": "image/png"}],
                                         items=[{"id": "i1", "type": "image", "media": "gone", "duration_s": 5}]))
    harness.source.check()
    harness.problems.report("item:i1", "item i1 failed to load: cannot decode image")
    assert any("media gone" in e for e in harness.problems.current())
    publish_with_image(content_folder, 2)  # serial 2 has media m1 and item i1 only
    harness.source.check()
    errors = harness.problems.current()
    assert not any("media gone" in e for e in errors)  # withdrawn media: its problem is gone
    assert any("item i1 failed" in e for e in errors)  # i1 is still in the manifest: still reported


def test_the_folder_source_keeps_the_cache_within_cache_max_mb(tmp_path: Path, content_folder: ContentFolder,
                                                                public_key_b64: str) -> None:
    harness = Harness(tmp_path, content_folder, [public_key_b64], cache_limit=250_000)

    def publish(serial: int) -> str:
        path = content_folder.root / "media" / f"blob{serial}.png"
        path.write_bytes(bytes([serial]) * 100_000)
        entry = media_entry(path, f"m{serial}", "image/png")
        content_folder.publish(base_manifest(serial, media=[entry], items=[
            {"id": f"i{serial}", "type": "image", "media": f"m{serial}", "duration_s": 5}]))
        return str(entry["sha256"])

    first = [publish(1)]
    harness.source.check()
    for serial in (2, 3, 4):
        first.append(publish(serial))
        harness.source.check()
        assert harness.serial() == serial and harness.store.path_for(first[-1]) is not None
        assert harness.store.bytes_used() <= 250_000
    assert harness.store.path_for(first[0]) is None  # the oldest went to make room
    assert not any("do not fit" in e for e in harness.problems.current())


def test_a_folder_manifest_that_does_not_fit_beside_the_old_one_arrives_whole_once_the_screen_turns(
        tmp_path: Path, content_folder: ContentFolder, public_key_b64: str) -> None:
    """Turnover for the folder source: the old media go (never the one on screen), the switch happens,
    and the media that waited for the screen are copied at the next check, with no change to the folder."""
    harness = Harness(tmp_path, content_folder, [public_key_b64], cache_limit=250_000)

    def blob(name: str, seed: int) -> dict[str, object]:
        path = content_folder.root / "media" / f"{name}.png"
        path.write_bytes(bytes([seed]) * 100_000)
        return media_entry(path, f"m{name}", "image/png")

    def publish(serial: int, entries: list[dict[str, object]]) -> None:
        content_folder.publish(base_manifest(serial, media=entries, items=[
            {"id": f"i{e['id']}", "type": "image", "media": e["id"], "duration_s": 5} for e in entries]))

    a, b, c, d = blob("a", 1), blob("b", 2), blob("c", 3), blob("d", 4)
    publish(1, [a, b])
    harness.source.check()
    harness.on_screen = {str(a["sha256"])}
    publish(2, [c, d])
    harness.source.check()
    assert harness.serial() == 2 and harness.store.path_for(str(c["sha256"])) is not None
    assert harness.store.path_for(str(a["sha256"])) is not None  # on screen: kept
    assert harness.store.path_for(str(d["sha256"])) is None
    assert any("waits for the media on screen" in e for e in harness.problems.current())
    harness.on_screen = {str(c["sha256"])}  # the switch turned the screen
    harness.source.check()  # the next safety check, the folder unchanged
    assert harness.store.path_for(str(d["sha256"])) is not None
    assert harness.store.path_for(str(a["sha256"])) is None and harness.store.bytes_used() <= 250_000
    assert not any("waits for the media on screen" in e for e in harness.problems.current())
