"""The resolution rule (PROTOCOL.md §4), checked at fixed and at thousands of generated instants."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from agent import schedule
from agent.manifest import accept_manifest
from agent.models import PRIORITIES, Alert, Manifest
from tests.conftest import base_manifest

VN = ZoneInfo("Asia/Ho_Chi_Minh")
SHA = {name: name * 64 for name in "abcd"}


def parse(**changes: Any) -> Manifest:
    raw = json.dumps(base_manifest(1, **changes)).encode()
    return accept_manifest(raw, keys=(), device_id="b1", groups=(), last_serial=None)


def at(text: str) -> dt.datetime:
    """A Vietnamese wall-clock time."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=VN)


def text_item(item_id: str, priority: str = "normal", when: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": item_id, "type": "text", "title": item_id, "duration_s": 10, "priority": priority, "when": when or {}}


def image_item(item_id: str, media: str, **extra: Any) -> dict[str, Any]:
    return {"id": item_id, "type": "image", "media": media, "duration_s": 10, **extra}


MEDIA = [{"id": f"m{k}", "url": f"media/{k}.png", "sha256": v, "size": 1, "type": "image/png"} for k, v in SHA.items()]


def test_when_days_and_times_in_the_manifest_timezone() -> None:
    m = parse(items=[text_item("i", when={"days": [1, 2, 3, 4, 5], "times": [["07:00", "11:30"], ["13:30", "17:00"]]})])
    when = m.items[0].when
    assert schedule.when_holds(when, at("2026-11-26T07:00"), VN)  # Thursday
    assert not schedule.when_holds(when, at("2026-11-26T11:30"), VN)  # end is exclusive
    assert not schedule.when_holds(when, at("2026-11-26T12:00"), VN)
    assert schedule.when_holds(when, at("2026-11-26T16:59"), VN)
    assert not schedule.when_holds(when, at("2026-11-28T08:00"), VN)  # Saturday
    # 00:30 UTC is 07:30 in Vietnam: days and times are read in the manifest's zone.
    assert schedule.when_holds(when, dt.datetime(2026, 11, 26, 0, 30, tzinfo=dt.UTC), VN)


def test_window_past_midnight_belongs_to_the_day_it_starts() -> None:
    when = parse(items=[text_item("i", when={"days": [5], "times": [["22:00", "02:00"]]})]).items[0].when
    assert schedule.when_holds(when, at("2026-11-27T23:00"), VN)  # Friday night
    assert schedule.when_holds(when, at("2026-11-28T01:59"), VN)  # Saturday early: Friday's window
    assert not schedule.when_holds(when, at("2026-11-28T02:00"), VN)
    assert not schedule.when_holds(when, at("2026-11-27T01:00"), VN)  # Friday early: Thursday's window


def test_from_until_are_instants() -> None:
    when = parse(items=[text_item("i", when={"from": "2026-11-20T00:00:00+07:00",
                                              "until": "2026-12-20T23:59:59+07:00"})]).items[0].when
    assert not schedule.when_holds(when, at("2026-11-19T23:59"), VN)
    assert schedule.when_holds(when, at("2026-11-20T00:00"), VN)
    assert not schedule.when_holds(when, at("2026-12-21T00:00"), VN)


def test_highest_class_only_round_robin_in_manifest_order() -> None:
    m = parse(items=[text_item("n1"), text_item("h1", "high"), text_item("n2"), text_item("h2", "high")])
    now = at("2026-11-26T09:00")
    first = schedule.choose(m, set(), now)
    assert first.item is not None and first.item.id == "h1"
    second = schedule.choose(m, set(), now, last_item_id="h1")
    assert second.item is not None and second.item.id == "h2"
    third = schedule.choose(m, set(), now, last_item_id="h2")
    assert third.item is not None and third.item.id == "h1"


def test_unverified_media_is_never_chosen_and_default_item_falls_back() -> None:
    m = parse(media=MEDIA, items=[image_item("i1", "ma", when={"days": [1]}), image_item("i2", "mb")],
              default_item="i1")
    thursday = at("2026-11-26T09:00")
    assert schedule.choose(m, set(), thursday).item is None  # nothing verified → splash
    assert schedule.choose(m, {SHA["a"]}, thursday).item.id == "i1"  # default, whatever its `when`
    assert schedule.choose(m, {SHA["a"], SHA["b"]}, thursday).item.id == "i2"
    assert schedule.choose(m, {SHA["a"]}, thursday, unplayable={"i1"}).item is None


def test_screen_windows_alerts_and_forced_modes() -> None:
    m = parse(items=[text_item("n")], screen={"on": [["05:30", "22:00"]]})
    night, day = at("2026-11-26T23:00"), at("2026-11-26T09:00")
    assert not schedule.choose(m, set(), night).screen_on
    assert schedule.choose(m, set(), day).screen_on
    assert schedule.choose(m, set(), night, screen_mode="on").item.id == "n"
    assert not schedule.choose(m, set(), day, screen_mode="off").screen_on
    alert = Alert("c1", "CẢNH BÁO", "Bão", until=night + dt.timedelta(minutes=5))
    over_forced_off = schedule.choose(m, set(), night, alerts=[alert], screen_mode="off")
    assert over_forced_off.screen_on and over_forced_off.alert == alert and over_forced_off.item is None
    expired = schedule.choose(m, set(), night + dt.timedelta(minutes=6), alerts=[alert])
    assert expired.alert is None and not expired.screen_on


def test_emergency_item_lights_the_screen_and_interrupts() -> None:
    m = parse(items=[text_item("n"), text_item("e", "emergency", when={"times": [["23:00", "23:30"]]})],
              screen={"on": [["05:30", "22:00"]]})
    choice = schedule.choose(m, set(), at("2026-11-26T23:10"))
    assert choice.screen_on and choice.item.id == "e"
    assert schedule.should_interrupt(m.items[0], choice)
    assert not schedule.should_interrupt(m.items[1], choice)
    normal = schedule.choose(m, set(), at("2026-11-26T10:00"), last_item_id="n")
    assert not schedule.should_interrupt(m.items[0], normal)


def test_ticker_follows_when_and_priority() -> None:
    m = parse(ticker=[{"id": "t1", "text": "ngày"}, {"id": "t2", "text": "đêm", "when": {"times": [["18:00", "06:00"]]}},
                      {"id": "t3", "text": "khẩn", "priority": "high", "when": {"days": [7]}}])
    assert [t.id for t in schedule.active_ticker(m, at("2026-11-26T10:00"))] == ["t1"]
    assert [t.id for t in schedule.active_ticker(m, at("2026-11-26T19:00"))] == ["t1", "t2"]
    assert [t.id for t in schedule.active_ticker(m, at("2026-11-29T10:00"))] == ["t3"]


# --- properties over many instants -------------------------------------------------------------

windows = st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 23), st.integers(0, 59)).map(
    lambda t: [f"{t[0]:02d}:{t[1]:02d}", f"{t[2]:02d}:{t[3]:02d}"])
whens = st.fixed_dictionaries({}, optional={
    "days": st.lists(st.integers(1, 7), min_size=1, max_size=7, unique=True),
    "times": st.lists(windows, min_size=1, max_size=3),
})
items_strategy = st.lists(
    st.tuples(st.sampled_from(["normal", "high", "emergency"]), whens, st.sampled_from([None, "ma", "mb"])),
    min_size=1, max_size=6)
instants = st.datetimes(min_value=dt.datetime(2026, 1, 1), max_value=dt.datetime(2027, 12, 31),
                        timezones=st.just(dt.UTC))


def build(spec: list[tuple[str, dict[str, Any], str | None]]) -> Manifest:
    items = [image_item(f"i{n}", media, priority=priority, when=when) if media
             else text_item(f"i{n}", priority, when) for n, (priority, when, media) in enumerate(spec)]
    return parse(media=MEDIA, items=items, default_item="i0")


@settings(max_examples=300, deadline=None)
@given(spec=items_strategy, now=instants, verified=st.sets(st.sampled_from([SHA["a"], SHA["b"]])),
       last=st.one_of(st.none(), st.integers(0, 5).map(lambda n: f"i{n}")))
def test_choice_is_always_a_playable_item_of_the_top_class(spec, now, verified, last) -> None:
    m = build(spec)
    choice = schedule.choose(m, verified, now, last_item_id=last)
    playable = schedule.playable_items(m, verified, now)
    if choice.item is None:
        assert not playable
        default = m.item_by_id("i0")
        assert not schedule.media_ready(m, default, verified)
        return
    assert schedule.media_ready(m, choice.item, verified)
    if playable:
        assert choice.item in playable
        best = max(PRIORITIES.index(i.priority) for i in playable)
        assert PRIORITIES.index(choice.item.priority) == best
    else:
        assert choice.item.id == "i0"


@settings(max_examples=200, deadline=None)
@given(spec=items_strategy, now=instants)
def test_round_robin_visits_each_top_class_item_once_per_cycle(spec, now) -> None:
    m = build(spec)
    verified = {SHA["a"], SHA["b"]}
    top = schedule.top_class(schedule.playable_items(m, verified, now))
    seen, last = [], None
    for _ in range(len(top)):
        choice = schedule.choose(m, verified, now, last_item_id=last, screen_mode="on")
        assert choice.item is not None
        seen.append(choice.item.id)
        last = choice.item.id
    if top:
        assert sorted(seen) == sorted(i.id for i in top)
        # and in manifest order, starting from the first
        assert seen == [i.id for i in top]


@settings(max_examples=300, deadline=None)
@given(days=st.lists(st.integers(1, 7), min_size=1, max_size=7, unique=True), window=windows, now=instants)
def test_wrapped_window_matches_a_minute_by_minute_reading(days, window, now) -> None:
    """Cross-check when_holds against a direct reading of the rule, minute by minute."""
    m = parse(items=[text_item("i", when={"days": days, "times": [window]})])
    local = now.astimezone(VN)
    minute = local.hour * 60 + local.minute
    start = int(window[0][:2]) * 60 + int(window[0][3:])
    end = int(window[1][:2]) * 60 + int(window[1][3:])
    if end > start:
        expected = start <= minute < end and local.isoweekday() in days
    elif minute >= start:
        expected = local.isoweekday() in days
    elif minute < end:
        expected = (local - dt.timedelta(days=1)).isoweekday() in days
    else:
        expected = False
    assert schedule.when_holds(m.items[0].when, now, VN) == expected
