"""The per-replica list of titles requested without a drmResourceId: counts per DRM system,
the cap and its eviction order, removal once a title has its id, and the Gateway hook."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.catalog.base import CatalogEntry
from proxy.catalog.missing import MissingListing, MissingStore, MissingTitles
from proxy.config import Config, parse_config
from proxy.config.reader import ConfigError
from proxy.domain import AssetId
from proxy.errors import UnknownAsset
from proxy.gateway import Gateway
from proxy.observability.access import RequestInfo
from proxy.routing.watcher import RulesWatcher
from tests.conftest import ENV, gateway_raw_config


class Clock:
    """A wall clock the test moves."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float = 1.0) -> float:
        self.now += seconds
        return self.now


def test_counts_per_title_and_per_drm_with_first_and_last_seen() -> None:
    clock = Clock()
    titles = MissingTitles(max_titles=10, clock=clock)
    first = clock.now
    titles.record("a", "widevine")
    clock.tick()
    titles.record("a", "widevine")
    last = clock.tick()
    titles.record("a", "fairplay")
    (title,) = titles.top(10)
    assert title.asset_id == "a" and title.count == 3
    assert title.by_drm == {"widevine": 2, "fairplay": 1}
    assert (title.first_seen, title.last_seen) == (first, last)


def test_top_is_most_requested_first_then_most_recent() -> None:
    clock = Clock()
    titles = MissingTitles(max_titles=10, clock=clock)
    for asset, times in (("once-old", 1), ("thrice", 3), ("once-new", 1), ("twice", 2)):
        clock.tick()
        for _ in range(times):
            titles.record(asset, "playready")
    assert [t.asset_id for t in titles.top(10)] == ["thrice", "twice", "once-new", "once-old"]
    assert [t.asset_id for t in titles.top(2)] == ["thrice", "twice"]


def test_the_cap_evicts_the_least_recently_seen_and_counts_evictions() -> None:
    sizes: list[int] = []
    evictions: list[None] = []
    titles = MissingTitles(
        max_titles=3,
        clock=Clock(),
        on_size=sizes.append,
        on_eviction=lambda: evictions.append(None),
    )
    for asset in ("a", "b", "c"):
        titles.record(asset, "widevine")
    for _ in range(5):
        titles.record("a", "widevine")  # a is requested most, but b is seen least recently
    titles.record("b", "widevine")  # now c is the least recently seen
    titles.record("d", "widevine")
    assert {t.asset_id for t in titles.top(10)} == {"a", "b", "d"}
    titles.record("e", "widevine")  # a was seen before b and d: it goes, however popular
    assert {t.asset_id for t in titles.top(10)} == {"b", "d", "e"}
    assert len(titles) == 3 and titles.evicted == 2 and len(evictions) == 2
    assert sizes == [1, 2, 3, 3, 3]  # told on every new title; evictions keep it at the cap


def test_an_evicted_title_comes_back_counted_afresh() -> None:
    clock = Clock()
    titles = MissingTitles(max_titles=1, clock=clock)
    titles.record("a", "widevine")
    titles.record("b", "widevine")
    back = clock.tick()
    titles.record("a", "clearkey")
    (title,) = titles.top(5)
    assert (title.asset_id, title.count, title.first_seen, title.by_drm) == (
        "a",
        1,
        back,
        {"clearkey": 1},
    )


def test_forget_removes_a_title_and_says_whether_it_was_listed() -> None:
    sizes: list[int] = []
    titles = MissingTitles(max_titles=5, on_size=sizes.append)
    titles.record("a", "widevine")
    titles.record("b", "widevine")
    assert "a" in titles
    assert titles.forget("a") is True
    assert "a" not in titles and titles.forget("a") is False
    assert titles.forget("never-seen") is False
    assert [t.asset_id for t in titles.top(5)] == ["b"]
    assert sizes == [1, 2, 1]  # a forget of an unlisted title tells no one


async def test_listing_reports_the_totals_for_the_admin_answer() -> None:
    titles = MissingTitles(max_titles=2)
    for asset in ("a", "b", "c"):
        titles.record(asset, "aes128")
    store: MissingStore = titles  # the in-memory store satisfies the Protocol
    listing = await store.listing(1)
    assert isinstance(listing, MissingListing)
    assert (len(listing.titles), listing.total, listing.evicted) == (1, 2, 1)
    assert (listing.max_titles, listing.scope) == (2, "replica")


def test_listed_titles_are_snapshots() -> None:
    titles = MissingTitles(max_titles=2)
    titles.record("a", "widevine")
    (before,) = titles.top(1)
    titles.record("a", "playready")
    assert before.count == 1 and dict(before.by_drm) == {"widevine": 1}


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        MissingTitles(max_titles=0)


# --- config ----------------------------------------------------------------------------------


def _config(tmp_path: Path, **sections: object) -> Config:
    raw = gateway_raw_config(tmp_path / "c.db", "http://127.0.0.1:9", "http://127.0.0.1:9")
    raw.update(sections)
    return parse_config(raw, base_dir=tmp_path, env=ENV)


def test_config_missing_section_default_and_value(tmp_path: Path) -> None:
    assert _config(tmp_path).missing.max_titles == 10_000
    assert _config(tmp_path, missing={"max_titles": 25}).missing.max_titles == 25


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"max_titles": 0}, "missing.max_titles: must be greater than 0"),
        ({"max_titles": "many"}, "missing.max_titles"),
        ({"max_title": 5}, "missing"),
    ],
)
def test_config_missing_section_problems(tmp_path: Path, section: object, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _config(tmp_path, missing=section)
    assert any(problem in p for p in raised.value.problems), raised.value.problems


# --- the Gateway hook ------------------------------------------------------------------------


class DictCatalog:
    """A real, minimal Catalog: entries in a dict the test edits."""

    def __init__(self) -> None:
        self.entries: dict[str, CatalogEntry] = {}

    async def get(self, asset_id: str) -> CatalogEntry | None:
        return self.entries.get(asset_id)

    async def ping(self) -> None:
        """Always answers."""

    async def close(self) -> None:
        """Nothing to close."""


async def test_resolve_records_titles_without_an_id_and_forgets_them_once_they_have_one(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    catalog = DictCatalog()
    catalog.entries["old"] = CatalogEntry("old", None)
    catalog.entries["new"] = CatalogEntry("new", "res-new")
    catalog.entries["gone"] = CatalogEntry("gone", None)
    missing = MissingTitles(max_titles=5)
    gateway = Gateway(config, catalog, {}, RulesWatcher.from_config(config), missing=missing)
    try:
        for drm in ("widevine", "widevine", "aes128"):
            await gateway.resolve(RequestInfo("r"), drm, AssetId("old"))
        await gateway.resolve(RequestInfo("r"), "widevine", AssetId("new"))
        (title,) = missing.top(5)
        assert (title.asset_id, title.count, dict(title.by_drm)) == (
            "old",
            3,
            {"widevine": 2, "aes128": 1},
        )
        catalog.entries["old"] = CatalogEntry("old", "res-old")  # the id arrived
        await gateway.resolve(RequestInfo("r"), "widevine", AssetId("old"))
        assert len(missing) == 0
        # A listed title that left the catalog leaves the list too (and is still a 404).
        await gateway.resolve(RequestInfo("r"), "playready", AssetId("gone"))
        del catalog.entries["gone"]
        with pytest.raises(UnknownAsset):
            await gateway.resolve(RequestInfo("r"), "playready", AssetId("gone"))
        assert "gone" not in missing
    finally:
        await gateway.close()
