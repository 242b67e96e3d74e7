"""``generate``, ``replay`` and ``erase``: getting events (and erasure requests) onto a topic."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from worker import codec
from worker.errors import ConfigError
from worker.evaluation.engines import run_core
from worker.evaluation.run import sized
from worker.evaluation.shadow import compare, render
from worker.events.timefmt import format_rfc3339
from worker.kafkaio import create_topics, produce
from worker.kafkasecurity import kafka_python_config
from worker.settings import ENV_PREFIX, Settings
from worker.synth import generate

CONTEXT_COLUMNS = ("platform", "country", "language", "channel", "timezone")


def _progress(label: str, total: int | None) -> Any:
    started = time.monotonic()

    def report(n: int) -> None:
        rate = n / max(1e-9, time.monotonic() - started)
        of = f"/{total:,}" if total else ""
        print(f"{label}: {n:,}{of} records ({rate:,.0f}/s)", file=sys.stderr, flush=True)

    return report


def keyed(lines: Iterator[bytes]) -> Iterator[tuple[bytes | None, bytes]]:
    """(key, value) per event: the key is the user id when the line parses; the value is passed verbatim, so
    malformed lines reach the worker (and its dead-letter topic) unchanged."""
    for raw in lines:
        key = None
        try:
            doc = codec.loads(raw)
            uid = doc.get("user_id") if isinstance(doc, dict) else None
            if isinstance(uid, str):
                key = uid.encode()
        except ValueError:
            pass
        yield key, raw


def generate_cmd(args: argparse.Namespace, settings: Settings) -> None:
    pop = generate(args.users, args.days, args.seed, args.switch_share, args.silent_share)
    if args.truth:
        Path(args.truth).write_bytes(codec.dumps_pretty({u: vars(t) for u, t in pop.truth.items()}))
    lines = (codec.dumps(e) for e in pop.events)
    if args.output:
        out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
        try:
            for line in lines:
                out.write(line + b"\n")
        finally:
            if out is not sys.stdout.buffer:
                out.close()
        print(f"generate: {len(pop.events):,} events of {args.users:,} users", file=sys.stderr)
        return
    topic = args.topic or settings.input_topic
    security = kafka_python_config(settings)
    create_topics(
        settings.bootstrap_servers, {topic: settings.partitions}, settings.replication_factor, security=security
    )
    produce(
        settings.bootstrap_servers,
        topic,
        keyed(lines),
        progress=_progress(f"generate -> {topic}", len(pop.events)),
        security=security,
    )


def read_events(path: Path, fmt: str | None) -> Iterator[bytes]:
    fmt = fmt or ("csv" if path.suffix.lower() == ".csv" else "jsonl")
    if fmt == "jsonl":
        with path.open("rb") as f:
            for line in f:
                line = line.strip()
                if line:
                    yield line
        return
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            yield codec.dumps(csv_row_to_event(row))


def csv_row_to_event(row: dict[str, str]) -> dict[str, Any]:
    """CSV columns user_id, event_type, timestamp, value, session_id, event_id, the context fields (plain or
    ``context.``-prefixed); any other column goes to ``properties``."""
    event: dict[str, Any] = {}
    context: dict[str, str] = {}
    props: dict[str, str] = {}
    for col, val in row.items():
        if col is None or val is None or val == "":
            continue
        name = col.strip().removeprefix("context.")
        if name in ("user_id", "event_type", "session_id", "event_id"):
            event[name] = val
        elif name == "timestamp":
            event[name] = int(val) if val.isdigit() else val
        elif name == "value":
            try:
                event[name] = float(val)
            except ValueError:
                event[name] = val  # left for the worker to dead-letter
        elif name in CONTEXT_COLUMNS:
            context[name] = val
        else:
            props[col] = val
    if context:
        event["context"] = context
    if props:
        event["properties"] = props
    return event


def env_file(path: str) -> dict[str, str]:
    """``NAME=value`` lines (``SEGMENT_WORKER_`` prefix optional; blank lines and ``#`` comments ignored), as
    environment entries."""
    out: dict[str, str] = {}
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"settings file {path}: {exc}") from exc
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"settings file {path}, line {n}: expected NAME=value")
        name = name.strip().upper()
        out[name if name.startswith(ENV_PREFIX) else ENV_PREFIX + name] = value.strip().strip('"')
    return out


def shadow_cmd(args: argparse.Namespace, current: Settings, environ: dict[str, str]) -> None:
    """Replay the file through the current settings and the candidate's, in-process, and report the users who
    would migrate differently."""
    candidate = Settings.load({**environ, **env_file(args.shadow)}, {"broker": current.broker})
    records = [(k or b"", v) for k, v in keyed(read_events(Path(args.file), args.format))]
    users = len({k for k, _ in records})
    runs = []
    for label, s in (("current", current), ("candidate", candidate)):
        started = time.monotonic()
        runs.append(run_core(sized(s, users), records))
        print(
            f"shadow: {label} settings over {len(records):,} records in {time.monotonic() - started:.1f}s",
            file=sys.stderr,
        )
    report = compare(runs[0], runs[1])
    print(render(report))
    if args.shadow_json:
        Path(args.shadow_json).write_bytes(codec.dumps_pretty(report))


def replay_cmd(args: argparse.Namespace, settings: Settings, environ: dict[str, str]) -> None:
    path = Path(args.file)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}")
    if args.shadow:
        shadow_cmd(args, settings, environ)
        return
    topic = args.topic or settings.input_topic
    security = kafka_python_config(settings)
    create_topics(
        settings.bootstrap_servers, {topic: settings.partitions}, settings.replication_factor, security=security
    )
    n = produce(
        settings.bootstrap_servers,
        topic,
        keyed(read_events(path, args.format)),
        rate=args.rate,
        progress=_progress(f"replay -> {topic}", None),
        security=security,
    )
    print(f"replay: {n:,} records to {topic}", file=sys.stderr)


def erase_cmd(args: argparse.Namespace, settings: Settings) -> None:
    """One erasure request per user id, keyed by it, stamped with the wall clock."""
    topic = settings.erasure_topic
    security = kafka_python_config(settings)
    create_topics(
        settings.bootstrap_servers, {topic: settings.partitions}, settings.replication_factor, security=security
    )
    now = format_rfc3339(int(time.time() * 1000))
    extra = {"request_id": args.request_id} if args.request_id else {}
    requests = [(uid.encode(), codec.dumps({"user_id": uid, "requested_at": now, **extra})) for uid in args.user_ids]
    n = produce(settings.bootstrap_servers, topic, requests, security=security)
    print(f"erase: {n:,} erasure requests to {topic}", file=sys.stderr)
