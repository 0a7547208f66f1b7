from __future__ import annotations

import dataclasses

import pytest

from cascadeq.config.settings import Settings, SettingsError


def test_defaults_then_environment_then_overrides() -> None:
    env = {
        "REDIS_URL": "redis://h:1/0",
        "CASCADEQ_RESULT_TTL_S": "60",
        "CASCADEQ_TRIM_EVERY_S": "0.5",
        "CASCADEQ_PREFIX": "p",
    }
    s = Settings.from_env(env, prefix="override", catalog=None)
    assert (s.redis_url, s.result_ttl_s, s.trim_every_s, s.prefix) == (
        "redis://h:1/0",
        60,
        0.5,
        "override",
    )
    assert s.max_deliveries == Settings().max_deliveries


def test_bad_numbers_name_the_variable() -> None:
    with pytest.raises(SettingsError, match="CASCADEQ_BLOCK_MS='soon'"):
        Settings.from_env({"CASCADEQ_BLOCK_MS": "soon"})


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().prefix = "x"  # type: ignore[misc]
