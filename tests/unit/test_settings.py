from __future__ import annotations

import pytest

from worker.errors import ConfigError
from worker.settings import Settings


def test_env_then_flags_override() -> None:
    s = Settings.load(
        {"SEGMENT_WORKER_PARTITIONS": "4", "SEGMENT_WORKER_HALF_LIVES_DAYS": "1, 3", "SEGMENT_WORKER_WEB_PORT": "1"},
        {"web_port": "7000"},
    )
    assert (s.partitions, s.half_lives_days, s.web_port) == (4, (1.0, 3.0), 7000)


def test_defaults_of_the_public_contract() -> None:
    s = Settings.load({})
    assert (s.web_port, s.input_topic, s.output_topic, s.dlq_topic) == (
        6066,
        "user-events",
        "segment-changes",
        "user-events-dlq",
    )


def test_round_trip_through_env() -> None:
    s = Settings(partitions=5, half_lives_days=(0.5, 2.0, 9.0), processing_guarantee="exactly_once")
    assert Settings.load(s.to_env()) == s


def test_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().partitions = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SEGMENT_WORKER_PARTITIONS": "many"}, "PARTITIONS"),
        ({"SEGMENT_WORKER_BROKER": "localhost:9092"}, "kafka://"),
        ({"SEGMENT_WORKER_PROCESSING_GUARANTEE": "maybe"}, "PROCESSING_GUARANTEE"),
        ({"SEGMENT_WORKER_K_MIN": "5", "SEGMENT_WORKER_K_MAX": "3"}, "k_min"),
        ({"SEGMENT_WORKER_TRAINER_NICE": "20"}, "trainer_nice"),
    ],
)
def test_bad_values_raise_config_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(env)


def test_unknown_flag_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        Settings.load({}, {"no_such": "1"})


def test_dormancy_is_each_users_own_unless_fixed() -> None:
    s = Settings(silence_checks_days=(30.0, 1.0, 0.0))
    assert s.silence_checks_ms == (86_400_000, 30 * 86_400_000) and s.dormant_after_ms is None
    fixed = Settings.load({"SEGMENT_WORKER_DORMANT_AFTER_DAYS": "14"})
    assert fixed.dormant_after_ms == 14 * 86_400_000
    assert Settings.load(fixed.to_env()) == fixed and Settings.load(s.to_env()) == s
    with pytest.raises(ConfigError):
        Settings(dormant_after_gaps=0)
