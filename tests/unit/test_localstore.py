from __future__ import annotations

from pathlib import Path

import pytest

from worker.localstore import LocalStore, LocalStoreError, Marker, digest


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "state.rocksdb")


def test_records_are_kept_per_table_partition_with_a_marker_of_the_newest(store: LocalStore) -> None:
    written = store.write(
        [
            ("users", 0, 10, b'"a"', b"a1"),
            ("users", 0, 11, b'"b"', b"b1"),
            ("users", 1, 5, b'"c"', b"c1"),
            ("partition-meta", 0, 3, b'"m"', b"{}"),
            ("users", 0, 12, b'"a"', b"a2"),  # the newer value wins
        ]
    )
    assert written == 5
    assert dict(store.items("users", 0)) == {b'"a"': b"a2", b'"b"': b"b1"}
    assert dict(store.items("users", 1)) == {b'"c"': b"c1"}
    assert dict(store.items("partition-meta", 0)) == {b'"m"': b"{}"}
    assert dict(store.items("users", 2)) == {}
    assert store.marker("users", 0) == Marker(13, digest(b'"a"', b"a2"))
    assert store.marker("users", 1) == Marker(6, digest(b'"c"', b"c1"))
    assert store.marker("users", 2) is None


def test_deletions_and_the_marker_follow_the_highest_offset(store: LocalStore) -> None:
    store.write([("users", 0, 7, b'"a"', b"a1"), ("users", 0, 8, b'"b"', b"b1")])
    store.write([("users", 0, 20, b'"a"', None), ("users", 0, 9, b'"c"', b"c1")])  # not in offset order
    assert dict(store.items("users", 0)) == {b'"b"': b"b1", b'"c"': b"c1"}
    assert store.marker("users", 0) == Marker(21, digest(b'"a"', None))


def test_forget_discards_one_partition_only(store: LocalStore) -> None:
    store.write([("users", 0, 1, b'"a"', b"1"), ("users", 1, 1, b'"b"', b"2"), ("users-x", 0, 1, b'"c"', b"3")])
    store.forget("users", 0)
    assert store.marker("users", 0) is None and dict(store.items("users", 0)) == {}
    assert dict(store.items("users", 1)) == {b'"b"': b"2"}
    assert dict(store.items("users-x", 0)) == {b'"c"': b"3"}  # a table whose name extends another's


def test_the_copy_survives_reopening_and_writes_after_close_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "state.rocksdb"
    first = LocalStore(path)
    first.write([("users", 3, 41, b'"a"', b"v")])
    first.close()
    assert first.write([("users", 3, 42, b'"a"', b"w")]) == 0
    again = LocalStore(path)
    assert dict(again.items("users", 3)) == {b'"a"': b"v"}
    assert again.marker("users", 3) == Marker(42, digest(b'"a"', b"v"))


def test_a_second_worker_on_the_same_directory_gets_a_clear_error(store: LocalStore) -> None:
    with pytest.raises(LocalStoreError, match="cannot open the local state store"):
        LocalStore(store.path)


def test_digest_tells_keys_values_and_deletions_apart() -> None:
    assert len({digest(b"ab", b"c"), digest(b"a", b"bc"), digest(b"a", None), digest(b"a", b"")}) == 4
