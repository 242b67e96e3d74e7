"""A fuzz run against a running worker: thousands of hostile records (random bytes, bit-flipped events, deep
nesting, huge numbers and strings, invalid Unicode, control characters, odd zones) among valid events. Every
record is applied or dead-lettered exactly once, the worker stays up with bounded memory, and its log never
carries more of a record than ``log_max_chars``."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.helpers import delivered, wait_for
from worker import codec
from worker.kafkaio import produce, read_all
from worker.process import metric_total
from worker.settings import Settings

pytestmark = pytest.mark.integration

MARK = "SECRETPAYLOAD"  # planted in records; the log may show at most log_max_chars of any record
T0 = 1_767_225_600_000


def hostile(rng: random.Random, i: int) -> bytes:
    event = {
        "user_id": f"u{rng.randrange(300)}",
        "event_type": rng.choice(["view", "post", "purchase"]),
        "timestamp": T0 + rng.randrange(10**9),
        "context": {"timezone": rng.choice(["Europe/Berlin", "../../etc/passwd", "Mars/Base", "\x00", ""])},
    }
    kind = i % 8
    if kind == 0:
        return codec.dumps(event)
    if kind == 1:
        return rng.randbytes(rng.randrange(0, 200))
    if kind == 2:
        raw = bytearray(codec.dumps(event))
        for _ in range(rng.randint(1, 3)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        return bytes(raw)
    if kind == 3:
        depth = rng.choice([10, 500, 1100, 5000])
        return codec.dumps(event)[:-1] + b',"properties":' + b"[" * depth + b"]" * depth + b"}"
    if kind == 4:
        return rng.choice(
            [
                codec.dumps({**event, "value": 1})[:-2] + b"9" * 400 + b"}",
                codec.dumps({**event, "user_id": MARK * 40}),
                codec.dumps({**event, "timestamp": (MARK * 5)[:64]}),
                codec.dumps({**event, "pad": MARK * 6000}),  # beyond max_event_bytes
            ]
        )
    if kind == 5:
        return codec.dumps(event).replace(b'"u', rng.choice([b'"\\ud800', b'"\xc0\xaf', b'"\xed\xa0\x80']), 1)
    if kind == 6:
        return codec.dumps({**event, "user_id": "".join(chr(rng.randrange(0, 32)) for _ in range(8))})
    return codec.dumps(rng.choice([[event], "x", 1, None, {**event, "context": {"consent": "no"}}]))


def test_a_fuzz_run_applies_or_dead_letters_every_record_once(worker_settings: Settings, start_worker: Any) -> None:
    s = worker_settings.replace(log_max_chars=40)
    rng = random.Random(11)
    records = [hostile(rng, i) for i in range(4000)]
    produce(s.bootstrap_servers, s.input_topic, [(None, r) for r in records])
    worker = start_worker(s)

    def accounted(m: dict[str, float]) -> float:
        return sum(
            metric_total(m, f"segment_worker_{name}_total")
            for name in ("events_processed", "events_dead_lettered", "events_excluded", "consent_withdrawals")
        )

    m = wait_for(worker, lambda m: accounted(m) >= len(records), timeout=180)
    assert accounted(m) == len(records)
    dead_count = metric_total(m, "segment_worker_events_dead_lettered_total")
    m = wait_for(worker, delivered(s.dlq_topic, int(dead_count)), timeout=60)  # on the topic, not just counted
    assert metric_total(m, "segment_worker_events_duplicate_total") == 0
    assert metric_total(m, "segment_worker_events_dead_lettered_total|reason=internal_error") == 0
    assert m["process_resident_memory_bytes"] < 600 * 2**20
    dead = read_all(s.bootstrap_servers, s.dlq_topic)
    assert len(dead) == metric_total(m, "segment_worker_events_dead_lettered_total") > len(records) // 2
    sent = {r: records.count(r) for r in records}
    for r in dead:  # each the original bytes of a record sent, no record dead-lettered more often than it was sent
        sent[r.value or b""] -= 1
    assert min(sent.values()) >= 0
    assert worker.status("/healthz") == 200
    worker.stop()
    text = worker.log_path.read_bytes()
    assert MARK[:8].encode() in text  # some of it was shown (the checks below are not vacuous) ...
    assert b"\x00" not in text
    for start in range(len(MARK)):  # ... but never more than log_max_chars of a record
        assert (MARK * 5)[start : start + 41].encode() not in text
