"""`admin.token` and the named `admin.tokens`: secrets from env or files, names checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxy.config import parse_config
from tests.config.test_load import base, problems_of
from tests.conftest import ADMIN_TOKEN, ENV

ALICE = "alice-admin-token-0123456789"
CI = "ci-admin-token-abcdefghijklmnop"
TOKEN_ENV = {**ENV, "ALICE_TOKEN": ALICE}


def with_tokens(tokens: Any, *, legacy: bool = True) -> dict[str, Any]:
    raw = base()
    raw["admin"] = {"tokens": tokens}
    if legacy:
        raw["admin"]["token"] = {"env": "ADMIN_TOKEN"}
    return raw


def test_named_tokens_come_from_env_and_files_beside_the_single_token(tmp_path: Path) -> None:
    (tmp_path / "ci.token").write_text(CI + "\n")
    raw = with_tokens({"alice": {"env": "ALICE_TOKEN"}, "ci.deploy-1": {"file": "ci.token"}})
    config = parse_config(raw, base_dir=tmp_path, env=TOKEN_ENV)
    assert config.admin_tokens == {"admin": ADMIN_TOKEN, "alice": ALICE, "ci.deploy-1": CI}
    assert config.admin_token == ADMIN_TOKEN  # the single token keeps working
    for secret in (ADMIN_TOKEN, ALICE, CI):
        assert secret not in repr(config)


def test_named_tokens_alone_leave_no_single_token() -> None:
    raw = with_tokens({"alice": {"env": "ALICE_TOKEN"}}, legacy=False)
    config = parse_config(raw, base_dir=Path("/srv"), env=TOKEN_ENV)
    assert config.admin_tokens == {"alice": ALICE}
    assert config.admin_token is None


def test_no_admin_section_means_no_admin_token() -> None:
    raw = base()
    del raw["admin"]
    assert parse_config(raw, base_dir=Path("/srv"), env=ENV).admin_tokens == {}


def test_every_token_problem_is_reported_with_its_name() -> None:
    env = {**TOKEN_ENV, "SHORT": "too-short", "SAME": ALICE}
    raw = with_tokens(
        {
            "alice": {"env": "ALICE_TOKEN"},
            "Bob": {"env": "ALICE_TOKEN"},
            "admin": {"env": "ALICE_TOKEN"},
            "short": {"env": "SHORT"},
            "twin": {"env": "SAME"},
            "unset": {"env": "NOT_SET_ANYWHERE"},
            "inline": {"value": "an-inline-secret-never-allowed"},
        }
    )
    problems = problems_of(raw, env=env)
    assert problems == [
        "admin.tokens.Bob: the name must match ^[a-z0-9][a-z0-9_.-]{0,63}$",
        "admin.tokens.admin: 'admin' is already the name of admin.token",
        "admin.tokens.short: must be at least 16 characters",
        "admin.tokens.twin: has the same secret as the token named 'alice'",
        "admin.tokens.unset.env: environment variable NOT_SET_ANYWHERE is not set",
        "admin.tokens.inline.value: unknown field",
        "admin.tokens.inline: must name exactly one of 'env' or 'file'",
    ]
    assert not any(ALICE in p or "too-short" in p or "inline-secret" in p for p in problems)


def test_the_single_token_and_a_named_one_may_not_share_a_secret() -> None:
    raw = with_tokens({"ops": {"env": "ADMIN_TOKEN"}})
    assert problems_of(raw) == ["admin.tokens.ops: has the same secret as the token named 'admin'"]


def test_tokens_must_be_a_mapping() -> None:
    assert problems_of(with_tokens(["alice"])) == [
        "admin.tokens: must be a mapping of caller name to {env: ...}/{file: ...}"
    ]
