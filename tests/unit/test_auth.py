from __future__ import annotations

import pytest

from worker.web.auth import authorized, is_open

OPEN = ("/metrics", "/healthz", "/readyz")


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer s3cret", True),
        ("bearer s3cret", True),
        ("Bearer s3cret ", True),
        ("Bearer s3cre", False),
        ("Bearer s3cret2", False),
        ("Basic s3cret", False),
        ("s3cret", False),
        ("", False),
        (None, False),
    ],
)
def test_only_the_bearer_token_is_accepted(header: str | None, ok: bool) -> None:
    assert authorized("s3cret", header) is ok
    assert authorized("", header) is True  # no token configured: the API is open


def test_open_paths_are_exact_or_prefixes_of_a_path_segment() -> None:
    assert is_open("/metrics", OPEN) and is_open("/healthz", OPEN)
    assert not is_open("/users/u1", OPEN) and not is_open("/metricsx", OPEN) and not is_open("/", OPEN)
    assert not is_open("/metrics", ())
