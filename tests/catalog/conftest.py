"""Catalog test fixtures: a catalog file as the schema-1 code (before key ids) wrote it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

# Verbatim the schema-1 DDL (proxy/catalog/sqlite.py before the key_ids column), as
# `catalog import` applied it: WAL journal, user_version 1.
SCHEMA_1 = """
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS assets (
    asset_id TEXT PRIMARY KEY,
    drm_resource_id TEXT NULL,
    key_holders TEXT NULL,            -- JSON list of provider names; NULL = unknown
    tags TEXT NOT NULL DEFAULT '[]',  -- JSON list
    updated_at REAL
);
-- Partial index: `catalog audit` lists assets lacking a drmResourceId without a full scan.
CREATE INDEX IF NOT EXISTS assets_missing_resource_id
    ON assets (asset_id) WHERE drm_resource_id IS NULL;
PRAGMA user_version = 1;
"""

# asset_id, drm_resource_id, key_holders JSON, tags JSON: as the schema-1 importer stored them.
SCHEMA_1_ROWS = [
    ("old-1", "res-1", '["incoming","legacy"]', '["kids"]'),
    ("old-2", None, '["legacy"]', "[]"),
    ("old-3", "res-3", None, "[]"),
]


@pytest.fixture
def schema_1_db(tmp_path: Path) -> Path:
    """A catalog file holding SCHEMA_1_ROWS in the schema-1 layout (no key_ids column)."""
    path = tmp_path / "schema-1.db"
    conn = sqlite3.connect(path)
    try:
        conn.executescript(SCHEMA_1)
        conn.executemany("INSERT INTO assets VALUES (?, ?, ?, ?, 1700000000.0)", SCHEMA_1_ROWS)
        conn.commit()
    finally:
        conn.close()
    return path
