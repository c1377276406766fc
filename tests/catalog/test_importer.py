"""The catalog importer and audit, on real files and real SQLite databases."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest

from proxy.catalog import CatalogEntry, SqliteCatalog
from proxy.catalog.importer import (
    AuditReport,
    CatalogImportError,
    ImportReport,
    Rejection,
    audit,
    audit_report_json,
    format_audit_report,
    format_import_report,
    import_file,
)
from proxy.routing.rules import ProviderTraits

HEADER = "asset_id,drm_resource_id,key_holders,tags\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def rows_in(db: Path) -> dict[str, tuple[str | None, str | None, str]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT asset_id, drm_resource_id, key_holders, tags FROM assets")
        return {aid: (rid, holders, tags) for aid, rid, holders, tags in rows}
    finally:
        conn.close()


async def lookup(db: Path, asset_id: str) -> CatalogEntry | None:
    catalog = SqliteCatalog(db)
    try:
        return await catalog.get(asset_id)
    finally:
        await catalog.close()


async def test_csv_happy_path(tmp_path: Path) -> None:
    src = write(
        tmp_path / "cat.csv",
        HEADER
        + "movie-1,res-1,legacy|incoming,kids|4k\n"
        + "movie-2,,legacy,\n"
        + "\n"
        + " movie-3 , res-3 ,,hd\n",
    )
    db = tmp_path / "sub.db"
    report = import_file(src, db)
    assert report == ImportReport(added=3, updated=0, rejected=[])
    assert await lookup(db, "movie-1") == CatalogEntry(
        "movie-1", "res-1", frozenset({"legacy", "incoming"}), frozenset({"kids", "4k"})
    )
    assert await lookup(db, "movie-2") == CatalogEntry(
        "movie-2", None, frozenset({"legacy"}), frozenset()
    )
    assert await lookup(db, "movie-3") == CatalogEntry("movie-3", "res-3", None, frozenset({"hd"}))


@pytest.mark.parametrize("name", ["cat.jsonl", "cat.ndjson", "cat.txt"])
async def test_jsonl_happy_path(tmp_path: Path, name: str) -> None:
    lines = [
        {"asset_id": "m1", "drm_resource_id": "r1", "key_holders": ["legacy"], "tags": ["a"]},
        {"asset_id": "m2", "drm_resource_id": None, "key_holders": None, "tags": []},
        {"asset_id": "m3"},
    ]
    src = write(tmp_path / name, "\n" + "\n".join(json.dumps(line) for line in lines) + "\n")
    db = tmp_path / "cat.db"
    assert import_file(src, db) == ImportReport(added=3, updated=0, rejected=[])
    assert await lookup(db, "m1") == CatalogEntry(
        "m1", "r1", frozenset({"legacy"}), frozenset({"a"})
    )
    assert await lookup(db, "m2") == CatalogEntry("m2", None, None, frozenset())
    assert await lookup(db, "m3") == CatalogEntry("m3", None, None, frozenset())


async def test_csv_is_sniffed_without_a_known_extension(tmp_path: Path) -> None:
    src = write(tmp_path / "catalog.export", "\n" + HEADER + "m1,r1,,\n")
    db = tmp_path / "cat.db"
    assert import_file(src, db).added == 1
    assert await lookup(db, "m1") == CatalogEntry("m1", "r1", None, frozenset())


CSV_CASES = [
    ("a b,r1,,", "asset_id 'a b' is not a valid id"),
    ("a1,r 1,,", "drm_resource_id 'r 1' is not a valid id"),
    ("a1,r1,Legacy,", "key holder 'Legacy' is not a valid provider name"),
    ("a1,r1,legacy||incoming,", "key holder '' is not a valid provider name"),
    ("a1,r1,,ok|bad tag", "tag 'bad tag' is not a valid tag"),
    ("a1,r1,legacy", "expected 4 columns, got 3"),
    ("a1,r1,legacy,x,extra", "expected 4 columns, got 5"),
    ("x" * 129 + ",r1,,", f"asset_id '{'x' * 64}...' is not a valid id"),
]


@pytest.mark.parametrize(("row", "reason"), CSV_CASES)
def test_csv_rejections_name_line_and_reason(tmp_path: Path, row: str, reason: str) -> None:
    src = write(tmp_path / "c.csv", HEADER + "ok-1,r1,,\n\n" + row + "\nok-2,r2,,\n")
    report = import_file(src, tmp_path / "c.db")
    assert report == ImportReport(added=2, updated=0, rejected=[Rejection(4, reason)])
    assert set(rows_in(tmp_path / "c.db")) == {"ok-1", "ok-2"}


JSONL_CASES = [
    ('{"asset_id": "a1",', "invalid JSON: Expecting property name enclosed in double quotes"),
    ('["a1"]', "expected a JSON object, got list"),
    ('{"asset_id": "a1", "color": "red", "size": 1}', "unknown field 'color', 'size'"),
    ('{"drm_resource_id": "r1"}', "missing field 'asset_id'"),
    ('{"asset_id": 7}', "field 'asset_id' must be a string"),
    ('{"asset_id": "a1", "drm_resource_id": 5}', "field 'drm_resource_id' must be a string"),
    ('{"asset_id": "a1", "key_holders": "legacy"}', "field 'key_holders' must be a list"),
    ('{"asset_id": "a1", "tags": [1]}', "field 'tags' must be a list of strings"),
    ('{"asset_id": "a1", "tags": null}', "field 'tags' must be a list of strings"),
    ('{"asset_id": "a1", "drm_resource_id": ""}', "drm_resource_id '' is not a valid id"),
    ('{"asset_id": "a/1"}', "asset_id 'a/1' is not a valid id"),
    ('{"asset_id": "a1", "key_holders": ["9x"]}', "key holder '9x' is not a valid provider"),
]


@pytest.mark.parametrize(("line", "reason"), JSONL_CASES)
def test_jsonl_rejections_name_line_and_reason(tmp_path: Path, line: str, reason: str) -> None:
    src = write(
        tmp_path / "c.jsonl", '{"asset_id": "ok-1"}\n\n' + line + '\n{"asset_id": "ok-2"}\n'
    )
    report = import_file(src, tmp_path / "c.db")
    assert (report.added, report.updated) == (2, 0)
    assert [r.line for r in report.rejected] == [3]
    assert report.rejected[0].reason.startswith(reason)


def test_duplicate_within_the_file_keeps_the_first(tmp_path: Path) -> None:
    src = write(tmp_path / "c.csv", HEADER + "bad id,r0,,\na1,r1,,\nbad id,r0,,\na1,r2,,\n")
    report = import_file(src, tmp_path / "c.db")
    assert report.rejected == [
        Rejection(2, "asset_id 'bad id' is not a valid id"),
        Rejection(4, "asset_id 'bad id' is not a valid id"),
        Rejection(5, "duplicate of line 3"),
    ]
    assert rows_in(tmp_path / "c.db") == {"a1": ("r1", None, "[]")}


def test_reimport_counts_updates_and_replaces_values(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    first = write(tmp_path / "1.csv", HEADER + "a1,,legacy,\na2,,legacy,\n")
    second = write(tmp_path / "2.csv", HEADER + "a2,r2,legacy|incoming,new\na3,r3,,\n")
    assert import_file(first, db) == ImportReport(added=2, updated=0, rejected=[])
    assert import_file(second, db) == ImportReport(added=1, updated=1, rejected=[])
    assert rows_in(db) == {
        "a1": (None, '["legacy"]', "[]"),
        "a2": ("r2", '["incoming","legacy"]', '["new"]'),
        "a3": ("r3", None, "[]"),
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "a1,r1,,\n",
            "must be the header 'asset_id,drm_resource_id,key_holders,tags,key_ids'"
            " or 'asset_id,drm_resource_id,key_holders,tags'",
        ),
        ("asset,resource,holders,tags\na1,,,\n", "got 'asset,resource,holders,tags'"),
        ("", "is empty"),
        ("\n  \n", "is empty"),
    ],
)
def test_bad_csv_header_or_empty_input_is_an_error(tmp_path: Path, text: str, message: str) -> None:
    db = tmp_path / "c.db"
    with pytest.raises(CatalogImportError, match=message):
        import_file(write(tmp_path / "c.csv", text), db)
    assert not db.exists()  # refused before the database was touched


def test_empty_jsonl_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogImportError, match="is empty"):
        import_file(write(tmp_path / "c.jsonl", "\n\n"), tmp_path / "c.db")


def test_header_only_csv_imports_nothing(tmp_path: Path) -> None:
    report = import_file(write(tmp_path / "c.csv", HEADER), tmp_path / "c.db")
    assert report == ImportReport(added=0, updated=0, rejected=[])


def test_missing_or_unreadable_input_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogImportError, match=r"cannot read .*nope\.csv"):
        import_file(tmp_path / "nope.csv", tmp_path / "c.db")
    with pytest.raises(CatalogImportError, match="cannot read"):
        import_file(tmp_path, tmp_path / "c.db")  # a directory


def test_unwritable_database_is_an_error(tmp_path: Path) -> None:
    src = write(tmp_path / "c.csv", HEADER + "a1,,,\n")
    with pytest.raises(CatalogImportError, match="cannot write the catalog database"):
        import_file(src, tmp_path / "no-such-dir" / "c.db")


def test_failure_midway_imports_nothing(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    import_file(write(tmp_path / "0.csv", HEADER + "a0,r0,,\n"), db)
    src = write(tmp_path / "c.csv", HEADER + "".join(f"a{i},,,\n" for i in range(20_000)))

    def interrupt(lines: int, done: int, total: int) -> None:
        if lines > 10_000:
            raise OSError("disk vanished")

    with pytest.raises(CatalogImportError, match="disk vanished"):
        import_file(src, db, progress=interrupt)
    assert rows_in(db) == {"a0": ("r0", None, "[]")}


def generate_big_csv(path: Path, rows: int, seed: int) -> dict[int, str]:
    """Write a CSV of `rows` assets with ~1% malformed rows; return line -> expected reason."""
    rng = random.Random(seed)
    expected: dict[int, str] = {}
    lines = [HEADER]
    for i in range(rows):
        line_no = i + 2
        kind = rng.randrange(500) if rng.random() < 0.01 else -1
        if kind == -1:
            lines.append(f"asset-{i},res-{i},legacy|incoming,tag{i % 7}\n")
            continue
        kind %= 5
        if kind == 0:
            lines.append(f"asset {i},res-{i},,\n")
            expected[line_no] = f"asset_id 'asset {i}' is not a valid id"
        elif kind == 1:
            lines.append(f"asset-{i},res/{i},,\n")
            expected[line_no] = f"drm_resource_id 'res/{i}' is not a valid id"
        elif kind == 2:
            lines.append(f"asset-{i},res-{i},Legacy,\n")
            expected[line_no] = "key holder 'Legacy' is not a valid provider name"
        elif kind == 3:
            lines.append(f"asset-{i},res-{i}\n")
            expected[line_no] = "expected 4 columns, got 2"
        else:
            lines.append("asset-0,res-0,,\n")  # asset-0 (line 2) is never malformed
            expected[line_no] = "duplicate of line 2"
    path.write_text("".join(lines), encoding="utf-8")
    return expected


def test_large_csv_with_scattered_bad_rows(tmp_path: Path) -> None:
    src = tmp_path / "big.csv"
    expected = generate_big_csv(src, 100_000, seed=20240611)
    assert 2 not in expected
    calls: list[tuple[int, int, int]] = []
    report = import_file(src, tmp_path / "big.db", progress=lambda *args: calls.append(args))
    assert report.added == 100_000 - len(expected)
    assert report.updated == 0
    assert {r.line: r.reason for r in report.rejected} == expected
    assert [r.line for r in report.rejected] == sorted(expected)
    # golden values for this seed, so the generator's own numbering is checked too
    assert len(report.rejected) == 984
    assert report.rejected[:2] == [
        Rejection(109, "expected 4 columns, got 2"),
        Rejection(165, "drm_resource_id 'res/163' is not a valid id"),
    ]
    assert report.rejected[-1] == Rejection(99875, "expected 4 columns, got 2")
    assert len(rows_in(tmp_path / "big.db")) == report.added
    # progress: many calls, never going backwards, ending at the last line and the full size
    total = src.stat().st_size
    assert len(calls) >= 19
    assert calls == sorted(calls)
    assert calls[-1] == (100_001, total, total)
    assert all(call[2] == total for call in calls)


def test_large_csv_bad_rows_are_where_the_seed_puts_them(tmp_path: Path) -> None:
    expected = generate_big_csv(tmp_path / "big.csv", 2_000, seed=7)
    report = import_file(tmp_path / "big.csv", tmp_path / "big.db")
    assert report.rejected == [Rejection(line, expected[line]) for line in sorted(expected)]
    assert report.added == 2_000 - len(expected)


@pytest.fixture
def audited_db(tmp_path: Path) -> Path:
    db = tmp_path / "c.db"
    import_file(write(tmp_path / "c.csv", HEADER + "m3,,,\nm1,r1,,\nm2,,,\nm0,,,\n"), db)
    return db


def test_audit_counts_and_lists_missing_resource_ids(audited_db: Path) -> None:
    assert audit(audited_db) == AuditReport(total=4, missing_count=3, missing=["m0", "m2", "m3"])
    assert audit(audited_db, limit=2) == AuditReport(total=4, missing_count=3, missing=["m0", "m2"])
    assert audit(audited_db, limit=0).missing == []


def test_audit_rejects_a_missing_database_and_a_negative_limit(tmp_path: Path) -> None:
    with pytest.raises(CatalogImportError, match="does not exist"):
        audit(tmp_path / "nope.db")
    with pytest.raises(ValueError, match="negative"):
        audit(tmp_path / "nope.db", limit=-1)


def test_format_audit_report(audited_db: Path) -> None:
    assert format_audit_report(audit(audited_db, limit=2)) == (
        "4 assets, 3 without a drm_resource_id (75.0%)\n  m0\n  m2\n  ... and 1 more"
    )
    assert format_audit_report(AuditReport(0, 0, [])) == "0 assets, 0 without a drm_resource_id"


def test_format_import_report_caps_the_rejection_list() -> None:
    rejected = [Rejection(i, f"reason {i}") for i in range(2, 62)]
    text = format_import_report(ImportReport(added=5, updated=2, rejected=rejected))
    lines = text.splitlines()
    assert lines[0] == "5 added, 2 updated, 60 rejected"
    assert lines[1] == "  line 2: reason 2"
    assert lines[50] == "  line 51: reason 51"
    assert lines[51:] == ["  ... and 10 more"]
    assert format_import_report(ImportReport(1, 0, [])) == "1 added, 0 updated, 0 rejected"


def test_oversized_field_and_bad_utf8_reject_only_their_rows(tmp_path: Path) -> None:
    src = tmp_path / "c.csv"
    src.write_bytes(
        HEADER.encode()
        + b"ok-1,,,\n"
        + b"big,"
        + b"x" * 200_000
        + b",,\n"
        + b"caf\xe9,,,\n"
        + b"ok-2,,,\n"
    )
    report = import_file(src, tmp_path / "c.db")
    assert report.added == 2
    assert [r.line for r in report.rejected] == [3, 4]
    assert report.rejected[0].reason.startswith("malformed CSV: field larger than field limit")
    assert report.rejected[1].reason == "asset_id 'caf\ufffd' is not a valid id"
    assert set(rows_in(tmp_path / "c.db")) == {"ok-1", "ok-2"}


# --- key ids ---------------------------------------------------------------------------------

KEYED_HEADER = "asset_id,drm_resource_id,key_holders,tags,key_ids\n"
KID_A = "00112233445566778899aabbccddeeff"
KID_B = "0123456789abcdef0123456789abcdef"
GUID_B = "01234567-89AB-CDEF-0123-456789ABCDEF"  # KID_B in GUID form, upper case


def key_ids_in(db: Path) -> dict[str, str | None]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT asset_id, key_ids FROM assets").fetchall())
    finally:
        conn.close()


async def test_csv_key_ids_are_normalised_deduplicated_and_kept_in_order(tmp_path: Path) -> None:
    src = write(
        tmp_path / "c.csv",
        KEYED_HEADER
        + f"m1,r1,incoming,,{KID_B}|{KID_A.upper()}\n"
        + f"m2,r2,,, {GUID_B} | {KID_A} | {KID_B} \n"  # GUID and hex of one id: a duplicate
        + "m3,r3,,,\n",
    )
    db = tmp_path / "c.db"
    assert import_file(src, db) == ImportReport(added=3, updated=0, rejected=[])
    assert await lookup(db, "m1") == CatalogEntry(
        "m1", "r1", frozenset({"incoming"}), frozenset(), (KID_B, KID_A)
    )
    entry = await lookup(db, "m2")
    assert entry is not None and entry.key_ids == (KID_B, KID_A)
    entry = await lookup(db, "m3")
    assert entry is not None and entry.key_ids == ()  # empty cell: unknown
    assert key_ids_in(db) == {
        "m1": f'["{KID_B}","{KID_A}"]',
        "m2": f'["{KID_B}","{KID_A}"]',
        "m3": None,
    }


async def test_jsonl_key_ids(tmp_path: Path) -> None:
    lines = [
        {"asset_id": "m1", "key_ids": [GUID_B.lower(), KID_A, KID_A.upper()]},
        {"asset_id": "m2", "key_ids": None},
        {"asset_id": "m3", "key_ids": []},
    ]
    src = write(tmp_path / "c.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    db = tmp_path / "c.db"
    assert import_file(src, db) == ImportReport(added=3, updated=0, rejected=[])
    assert await lookup(db, "m1") == CatalogEntry("m1", None, None, frozenset(), (KID_B, KID_A))
    assert key_ids_in(db) == {"m1": f'["{KID_B}","{KID_A}"]', "m2": None, "m3": None}


KEY_ID_CSV_CASES = [
    (f"a1,r1,,,{KID_A[:31]}", f"key id '{KID_A[:31]}' has 31 hex digits, expected 32"),
    (f"a1,r1,,,{KID_A}0", f"key id '{KID_A}0' has 33 hex digits, expected 32"),
    (f"a1,r1,,,{KID_A[:31]}g", f"key id '{KID_A[:31]}g' is not hexadecimal"),
    (f"a1,r1,,,0x{KID_A[:30]}", f"key id '0x{KID_A[:30]}' is not hexadecimal"),
    (f"a1,r1,,,{KID_A}||{KID_B}", "key id 2 in key_ids is empty"),
    (f"a1,r1,,,{KID_A}|", "key id 2 in key_ids is empty"),
    (f"a1,r1,,,|{KID_A}", "key id 1 in key_ids is empty"),
    (f"a1,r1,,,{KID_A}| |{KID_B}", "key id 2 in key_ids is empty"),
    ("a1,r1,,,0123456789-abcdef-0123-4567-89abcdef", "is not a GUID (8-4-4-4-12 hex digits)"),
    (f"a1,r1,,,{{{GUID_B}}}", f"key id '{{{GUID_B}}}' is not hexadecimal"),
    (f"a1,r1,,,{KID_A} {KID_B}", "is not hexadecimal"),
    ("a1,r1,,,caf\u00e9" + "0" * 28, "is not hexadecimal"),
    ("a1,r1,,", "expected 5 columns, got 4"),
    (f"a1,r1,,,{KID_A},x", "expected 5 columns, got 6"),
]


@pytest.mark.parametrize(("row", "reason"), KEY_ID_CSV_CASES)
def test_csv_key_id_rejections_name_line_and_reason(tmp_path: Path, row: str, reason: str) -> None:
    src = write(tmp_path / "c.csv", KEYED_HEADER + f"ok-1,r1,,,{KID_A}\n\n" + row + "\nok-2,,,,\n")
    report = import_file(src, tmp_path / "c.db")
    assert (report.added, report.updated) == (2, 0)
    assert [r.line for r in report.rejected] == [4]
    assert reason in report.rejected[0].reason
    assert set(rows_in(tmp_path / "c.db")) == {"ok-1", "ok-2"}


KEY_ID_JSONL_CASES = [
    ({"key_ids": KID_A}, "field 'key_ids' must be a list of strings or null"),
    ({"key_ids": f"{KID_A}|{KID_B}"}, "field 'key_ids' must be a list of strings or null"),
    ({"key_ids": [KID_A, 7]}, "field 'key_ids' must be a list of strings or null"),
    ({"key_ids": {"id": KID_A}}, "field 'key_ids' must be a list of strings or null"),
    ({"key_ids": [KID_A, ""]}, "key id 2 in key_ids is empty"),
    ({"key_ids": [KID_A[:-2]]}, f"key id '{KID_A[:-2]}' has 30 hex digits, expected 32"),
    ({"key_ids": [" " + KID_A]}, "is not hexadecimal"),  # JSON values are taken as written
    ({"key_ids": ["z" * 32]}, f"key id '{'z' * 32}' is not hexadecimal"),
    ({"key_ids": ["a" * 200]}, f"key id '{'a' * 64}...' has 200 hex digits, expected 32"),
]


@pytest.mark.parametrize(("fields", "reason"), KEY_ID_JSONL_CASES)
def test_jsonl_key_id_rejections_name_line_and_reason(
    tmp_path: Path, fields: dict[str, object], reason: str
) -> None:
    line = json.dumps({"asset_id": "a1", **fields})
    src = write(
        tmp_path / "c.jsonl", '{"asset_id": "ok-1"}\n\n' + line + '\n{"asset_id": "ok-2"}\n'
    )
    report = import_file(src, tmp_path / "c.db")
    assert report.rejected == [Rejection(3, report.rejected[0].reason)]
    assert reason in report.rejected[0].reason
    assert report.added == 2


def test_input_without_key_ids_keeps_the_stored_ones(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    first = KEYED_HEADER + "".join(f"m{i},r{i},,,{KID_A}\n" for i in range(1, 5))
    assert import_file(write(tmp_path / "1.csv", first), db).added == 4
    # The old 4-column header: values replaced, key ids kept; a new asset's are unknown.
    old = HEADER + "m1,r1-new,legacy,\nm5,r5,,\n"
    assert import_file(write(tmp_path / "2.csv", old), db) == ImportReport(1, 1, [])
    # JSON Lines: no field keeps them, null or [] clears them.
    lines = [
        {"asset_id": "m2", "drm_resource_id": "r2-new"},
        {"asset_id": "m3", "key_ids": None},
        {"asset_id": "m4", "key_ids": []},
    ]
    jsonl = "".join(json.dumps(line) + "\n" for line in lines)
    assert import_file(write(tmp_path / "3.jsonl", jsonl), db) == ImportReport(0, 3, [])
    kid_json = f'["{KID_A}"]'
    assert key_ids_in(db) == {"m1": kid_json, "m2": kid_json, "m3": None, "m4": None, "m5": None}
    assert rows_in(db)["m1"] == ("r1-new", '["legacy"]', "[]")
    # A keyed file with an empty cell clears them too.
    assert import_file(write(tmp_path / "4.csv", KEYED_HEADER + "m1,r1,,,\n"), db).updated == 1
    assert key_ids_in(db)["m1"] is None


def test_mixed_jsonl_rows_with_and_without_key_ids_across_chunks(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    seed = "".join(
        json.dumps({"asset_id": f"m{i}", "key_ids": [KID_A]}) + "\n" for i in range(12_000)
    )
    import_file(write(tmp_path / "1.jsonl", seed), db)
    lines = [
        {"asset_id": f"m{i}", "key_ids": [KID_B]} if i % 3 == 0 else {"asset_id": f"m{i}"}
        for i in range(12_000)
    ]
    jsonl = "".join(json.dumps(line) + "\n" for line in lines)
    assert import_file(write(tmp_path / "2.jsonl", jsonl), db) == ImportReport(0, 12_000, [])
    stored = key_ids_in(db)
    assert all(stored[f"m{i}"] == f'["{KID_B if i % 3 == 0 else KID_A}"]' for i in range(12_000))


# --- a catalog file of schema 1 (before key ids) ---------------------------------------------


async def test_import_migrates_a_schema_1_file_and_keeps_its_rows(schema_1_db: Path) -> None:
    reader = SqliteCatalog(schema_1_db)  # opened before the migration, kept open across it
    try:
        before = await reader.get("old-3")
        assert before is not None and before.key_ids == ()
        src = write(schema_1_db.with_name("new.csv"), KEYED_HEADER + f"old-3,res-3,,,{GUID_B}\n")
        # A reader holds the file open, so it stays in WAL mode (said in the report).
        assert import_file(src, schema_1_db) == ImportReport(
            added=0, updated=1, rejected=[], left_in_wal=True
        )
        # the open reader sees the new column on its next lookup
        after = await reader.get("old-3")
        assert after == CatalogEntry("old-3", "res-3", None, frozenset(), (KID_B,))
    finally:
        await reader.close()
    conn = sqlite3.connect(schema_1_db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(assets)")}
        assert "assets_missing_resource_id" in indexes
    finally:
        conn.close()
    assert rows_in(schema_1_db)["old-1"] == ("res-1", '["incoming","legacy"]', '["kids"]')
    assert key_ids_in(schema_1_db) == {"old-1": None, "old-2": None, "old-3": f'["{KID_B}"]'}
    assert await lookup(schema_1_db, "old-1") == CatalogEntry(
        "old-1", "res-1", frozenset({"incoming", "legacy"}), frozenset({"kids"})
    )


def test_old_header_import_into_a_schema_1_file(schema_1_db: Path) -> None:
    src = write(schema_1_db.with_name("old.csv"), HEADER + "old-2,res-2,legacy,\nold-4,,,\n")
    assert import_file(src, schema_1_db) == ImportReport(added=1, updated=1, rejected=[])
    assert key_ids_in(schema_1_db) == dict.fromkeys(["old-1", "old-2", "old-3", "old-4"])


def test_audit_reads_a_schema_1_file_without_changing_it(schema_1_db: Path) -> None:
    before = schema_1_db.read_bytes()
    report = audit(schema_1_db, key_id_providers=["incoming"])
    # old-2's keys are only at legacy: no key id can make incoming serve it
    assert report == AuditReport(3, 1, ["old-2"], ("incoming",), 2, ["old-1", "old-3"])
    assert schema_1_db.read_bytes() == before


# --- audit of key ids ------------------------------------------------------------------------


@pytest.fixture
def keyed_db(tmp_path: Path) -> Path:
    db = tmp_path / "keyed.db"
    rows = [
        f"k-both,r1,legacy|incoming,,{KID_A}",  # has key ids
        "n-both,r2,legacy|incoming,,",  # incoming holds the keys: missing
        "n-unknown,,,,",  # holders unknown, any provider may: missing
        "n-legacy,r4,legacy,,",  # only legacy holds the keys: not a gap for incoming
        "n-axinom,r5,axinom,,",  # a gap only for axinom
        f"k-unknown,r6,,,{KID_B}",
    ]
    import_file(write(tmp_path / "keyed.csv", KEYED_HEADER + "\n".join(rows) + "\n"), db)
    return db


def test_audit_lists_assets_without_the_key_ids_a_provider_needs(keyed_db: Path) -> None:
    report = audit(keyed_db, key_id_providers={"incoming"})
    assert report.key_id_providers == ("incoming",)
    assert (report.missing_key_ids_count, report.missing_key_ids) == (2, ["n-both", "n-unknown"])
    both = audit(keyed_db, limit=2, key_id_providers=["incoming", "axinom"])
    assert both.key_id_providers == ("axinom", "incoming")
    assert (both.missing_key_ids_count, both.missing_key_ids) == (3, ["n-axinom", "n-both"])
    assert audit(keyed_db, limit=0, key_id_providers=["incoming"]).missing_key_ids == []


def test_audit_without_providers_that_need_key_ids(keyed_db: Path) -> None:
    unchecked = audit(keyed_db)
    assert unchecked == AuditReport(total=6, missing_count=1, missing=["n-unknown"])
    none_need = audit(keyed_db, key_id_providers=())
    assert (none_need.key_id_providers, none_need.missing_key_ids_count) == ((), 0)


def test_format_audit_report_with_key_ids(keyed_db: Path) -> None:
    assert format_audit_report(audit(keyed_db, limit=1, key_id_providers={"incoming"})) == (
        "6 assets, 1 without a drm_resource_id (16.7%)\n"
        "  n-unknown\n"
        "2 without key ids, which incoming needs (33.3%)\n"
        "  n-both\n"
        "  ... and 1 more"
    )
    two = audit(keyed_db, limit=5, key_id_providers={"incoming", "axinom"})
    assert format_audit_report(two).splitlines()[2:] == [
        "3 without key ids, which axinom, incoming need (50.0%)",
        "  n-axinom",
        "  n-both",
        "  n-unknown",
    ]
    assert format_audit_report(audit(keyed_db, key_id_providers=())).splitlines()[2:] == [
        "no configured provider needs key ids"
    ]
    assert format_audit_report(AuditReport(0, 0, [], ("incoming",))) == (
        "0 assets, 0 without a drm_resource_id\n0 without key ids, which incoming needs"
    )


# --- checks against the configured providers, all-or-nothing -------------------------------

PROVIDER_TRAITS = {
    "legacy": ProviderTraits(needs_drm_resource_id=False),
    "incoming": ProviderTraits(needs_drm_resource_id=True, needs_key_ids=True),
}


def test_rows_are_checked_against_the_configured_providers(tmp_path: Path) -> None:
    src = write(
        tmp_path / "cat.csv",
        HEADER.replace("tags\n", "tags,key_ids\n")
        + "ok,r-1,legacy|incoming,,\n"
        + "typo,r-2,legcy|incoming,,\n"
        + "no-id,,incoming,,00112233445566778899aabbccddeeff\n"
        + "no-kids,r-4,incoming,,\n"
        + "anyone,,,,\n",
    )
    report = import_file(src, tmp_path / "c.db", providers=PROVIDER_TRAITS)
    assert report.rejected == [
        Rejection(3, "key holder 'legcy' not configured (providers: incoming, legacy)"),
        Rejection(4, "no configured provider can serve it: incoming needs a drm_resource_id"),
        Rejection(5, "no configured provider can serve it: incoming needs key ids"),
    ]
    assert set(rows_in(tmp_path / "c.db")) == {"ok", "anyone"}


def test_an_old_export_is_not_held_to_key_ids_it_cannot_carry(tmp_path: Path) -> None:
    src = write(tmp_path / "cat.csv", HEADER + "kept,r-1,incoming,\n")
    assert not import_file(src, tmp_path / "c.db", providers=PROVIDER_TRAITS).rejected


def test_allow_rejects_false_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    import_file(write(tmp_path / "first.csv", HEADER + "old,r-0,,\n"), db)
    src = write(tmp_path / "cat.csv", HEADER + "new,r-1,,\nbad id,,,\n")
    report = import_file(src, db, allow_rejects=False)
    assert (report.applied, report.added, len(report.rejected)) == (False, 1, 1)
    assert set(rows_in(db)) == {"old"}
    assert format_import_report(report).splitlines()[0] == (
        "nothing imported: 1 added, 0 updated, 1 rejected (would be)"
    )


def test_audit_with_providers_reports_unservable_assets(tmp_path: Path) -> None:
    src = write(tmp_path / "cat.csv", HEADER + "a,r-1,legacy,,\nb,,incoming,\nc,r-3,ghost,\n")
    db = tmp_path / "c.db"
    import_file(src, db)
    report = audit(db, providers=PROVIDER_TRAITS, limit=1)
    assert report.unservable is not None
    assert (report.unservable.count, report.unservable.sample) == (
        2,
        [("b", "no configured provider can serve it: incoming needs a drm_resource_id")],
    )
    assert report.unservable.by_cause == {
        "unknown_holder": 1,
        "no_drm_resource_id": 1,
        "no_key_ids": 0,
        "no_key_holder": 0,
    }
    assert audit_report_json(report)["unservable"] == {
        "providers": ["incoming", "legacy"],
        "count": 2,
        "by_cause": report.unservable.by_cause,
        "sample": [{"asset_id": "b", "reason": report.unservable.sample[0][1]}],
    }
