from __future__ import annotations

from worker.changes.owners import UserPartitions
from worker.routing import partition_for, partitioner


def test_a_user_the_table_knows_is_where_the_table_says() -> None:
    owners = UserPartitions({"u1": 5}, partitioner(8))
    assert partition_for("u1", 8) != 5
    assert owners("u1") == 5  # the table's record, not the partitioner's answer


def test_a_user_the_table_has_not_seen_goes_by_the_partitioner() -> None:
    owners = UserPartitions({}, partitioner(8))
    assert [owners(f"user-{i}") for i in range(50)] == [partition_for(f"user-{i}", 8) for i in range(50)]


def test_the_tables_record_is_shared_not_copied() -> None:
    known: dict[str, int] = {}
    owners = UserPartitions(known, lambda _uid: 0)
    assert owners("u2") == 0
    known["u2"] = 3  # the table set the key after the lookup was made
    assert owners("u2") == 3
    del known["u2"]
    assert owners("u2") == 0
