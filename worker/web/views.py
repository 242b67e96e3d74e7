"""The worker's HTTP API: pure documents (:func:`user_document`, :func:`personas_document`) and the Faust views
that serve them (:func:`register`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import faust
from faust.exceptions import SameNode
from faust.web import Request, Response, View
from faust.web.exceptions import ServiceUnavailable

from worker import codec, metrics
from worker.changes import Segmenter
from worker.clustering import ModelSnapshot
from worker.errors import ConfigError
from worker.events.timefmt import format_rfc3339
from worker.features.state import UserState, features_at
from worker.personas import page
from worker.personas.registry import RESERVED
from worker.personas.timeline import Timeline
from worker.runtime.modelpin import MODEL_SLOTS


def user_document(
    user_id: str, state: UserState, segment_name: Callable[[str | None], str | None], as_of: int, half_lives: Any
) -> dict[str, Any]:
    """``GET /users/{id}`` of a user with consent: persona, counts, recent changes and features as of ``as_of``."""
    return {
        "user_id": user_id,
        "segment": state.segment,
        "segment_name": segment_name(state.segment),
        "segment_since": format_rfc3339(state.segment_since) if state.segment else None,
        "pending_segment": state.pending,
        "event_count": state.n,
        "value_total": state.value_total,
        "first_event_at": format_rfc3339(state.first_ts),
        "last_event_at": format_rfc3339(state.last_ts),
        "changes": state.seq,
        "rule_segments": state.rule_segments,
        "recent_changes": [
            {
                "sequence": seq,
                "from_segment": before,
                "to_segment": after,
                "from_segment_name": segment_name(before),
                "to_segment_name": segment_name(after),
                "changed_at": format_rfc3339(t),
                "trigger": trigger,
                "reasons": [{"feature": f, "direction": d} for f, d in why],
            }
            for seq, before, after, t, trigger, why in reversed(state.history)
        ],
        "model_version": state.model_version if state.model_version >= 0 else None,
        "features_as_of": format_rfc3339(as_of),
        "features": features_at(state, as_of, state.half_lives or half_lives),
    }


def personas_document(
    model: ModelSnapshot | None, counts: Mapping[str, int], time_scales: Any, owned: set[int]
) -> dict[str, Any]:
    """``GET /personas``: the model's personas with their sizes on this worker's partitions and the model version
    and event time each got its id at (``since``), then the reserved segments (new, lapsing, dormant) that hold
    anyone, without a profile."""
    out = []
    if model is not None:
        for i, (pid, name) in enumerate(zip(model.persona_ids, model.persona_names, strict=True)):
            line = model.lineage.get(pid)  # (a model written before lineage was kept: unknown)
            since = {"version": line.since_version, "at": _at(line.since_ms)} if line else None
            out.append(
                {"id": pid, "name": name, "size": counts.get(pid, 0), "since": since, "profile": model.profile(i)}
            )
    for segment in RESERVED:
        if counts.get(segment):
            out.append({"id": segment, "name": segment, "size": counts[segment], "since": None, "profile": None})
    return {
        "model_version": model.version if model else None,
        "time_scales": time_scales,
        "sizes_cover_partitions": sorted(owned),
        "personas": out,
    }


def history_document(models: Sequence[ModelSnapshot]) -> dict[str, Any]:
    """``GET /personas/history``: the personas over the model versions the group keeps (the last
    ``MODEL_SLOTS``): per version its personas and lifecycle events (oldest first), and a catalogue of every persona
    id those versions hold — its name, since when it has it, and what retired it."""
    ordered = sorted({m.version: m for m in models}.values(), key=lambda m: m.version)
    versions, catalogue = [], {}
    for m in ordered:
        events = [
            {"event_id": e["event_id"], "kind": e["kind"], "from": _ids(e["from"]), "to": _ids(e["to"])}
            for e in m.changes
        ]
        versions.append(
            {"version": m.version, "at": _at(m.as_of_ms), "personas": list(m.persona_ids), "changes": events}
        )
        for pid, name in zip(m.persona_ids, m.persona_names, strict=True):
            line = m.lineage.get(pid)
            since = {"version": line.since_version, "at": _at(line.since_ms)} if line else None
            catalogue[pid] = {"name": name, "since": since, "retired": None}
        for e in events:
            for pid in set(e["from"]) - set(e["to"]) - set(m.persona_ids):
                if pid in catalogue:
                    catalogue[pid]["retired"] = {"version": m.version, "kind": e["kind"], "event_id": e["event_id"]}
    return {"kept_versions": MODEL_SLOTS, "versions": versions, "personas": catalogue}


def _ids(personas: Sequence[dict[str, Any]]) -> list[str]:
    return [p["id"] for p in personas]


def _at(ms: int) -> str | None:
    return format_rfc3339(ms) if ms else None


@dataclass(frozen=True)
class Sources:
    """What the views read from the running worker."""

    segmenter: Segmenter
    users: Any  # the users table (routing by key, its size)
    owned: set[int]  # partitions whose state is read (the set itself, kept current by the worker)
    assigned: Callable[[], set[int]]
    ready: Callable[[], bool]
    topic_problems: Callable[[], list[str]]
    partition_of: Callable[[str], int]
    half_lives: Any  # the settings' half-lives, for users whose state predates learned ones
    kept_models: Callable[[], list[ModelSnapshot]]  # the model versions the group keeps (the models table's slots)
    timeline: Timeline  # the moves this worker delivered since it started


def personas_page(src: Sources, window: str | None, now_ms: int) -> str:
    """``GET /personas/view``: the personas page (worker.personas.page) of this worker's partitions, its lifecycle
    events those of the model versions the group keeps."""
    seg = src.segmenter
    scope = (
        f"this worker: users of partitions {', '.join(map(str, sorted(src.owned))) or 'none'}, the moves it "
        "delivered since it started (segment-worker report reads the whole group)"
    )
    events = [e for m in src.kept_models() for e in m.changes]
    built = page.build(
        seg.model, seg.counts, src.timeline, events, scope=scope, window_ms=page.window_ms(window), now_ms=now_ms
    )
    return page.render(built)


def _json(view: View, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return view.bytes(codec.dumps(obj), content_type="application/json", status=status, headers=headers)


def _retry_later(view: View, error: str, user_id: str) -> Response:
    """503 with Retry-After: the user's state is momentarily out of reach (a rebalance, a recovery)."""
    return _json(view, {"error": error, "user_id": user_id}, status=503, headers={"Retry-After": "1"})


def register(app: faust.App, src: Sources) -> None:
    """The worker's pages: /metrics, /healthz, /readyz, /personas, /personas/history, /personas/view and
    /users/{user_id}."""
    seg = src.segmenter

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            body, ctype = metrics.exposition()
            return self.bytes(body, content_type=ctype.split(";")[0])

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            version = seg.model.version if seg.model else None
            body = {"status": "ok", "model_version": version, "partitions": sorted(src.owned), "users": len(src.users)}
            return _json(self, body)

    @app.page("/readyz")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            ready = src.ready()
            body = {
                "ready": ready,
                "partitions": sorted(src.owned),
                "assigned": sorted(src.assigned()),
                "topic_problems": src.topic_problems(),
            }
            return _json(self, body, status=200 if ready else 503)

    @app.page("/personas")
    class Personas(View):
        async def get(self, request: Request) -> Response:
            return _json(self, personas_document(seg.model, seg.counts, seg.time_scales(), src.owned))

    @app.page("/personas/history")
    class History(View):
        async def get(self, request: Request) -> Response:
            return _json(self, history_document(src.kept_models()))

    @app.page("/personas/view")
    class PersonasPage(View):
        async def get(self, request: Request) -> Response:
            try:
                html = personas_page(src, request.query.get("window"), int(time.time() * 1000))
            except ConfigError as exc:
                return _json(self, {"error": str(exc)}, status=400)
            return self.bytes(html.encode(), content_type="text/html")  # the page says utf-8 itself

    @app.page("/users/{user_id}")
    async def user_view(web: View, request: Request, user_id: str) -> Response:
        user_id = seg.parser.pseudonym(user_id)  # asked by raw id: the state is kept under the pseudonym
        try:  # the worker holding the user's partition answers
            return await app.router.route_req(src.users.name, user_id, web.web, request)
        except SameNode:
            pass
        except (ServiceUnavailable, OSError, TimeoutError) as exc:  # aiohttp connection errors are OSErrors
            # between a member leaving and the rebalance, the old owner may still be named
            return _retry_later(web, f"the worker holding this user is not reachable: {exc}", user_id)
        partition = src.partition_of(user_id)
        if partition not in src.owned:  # ours, but its state is not read yet (start-up, rebalance)
            return _retry_later(web, "the state of this user's partition is being recovered", user_id)
        state = seg.newest(user_id)
        if state is None:  # never seen, or erased
            return _json(web, {"error": "unknown user", "user_id": user_id}, status=404)
        if state.opted_out:  # nothing is kept beyond the fact
            return _json(web, {"user_id": user_id, "consent": {"segmentation": False}})
        as_of = max(state.last_ts, seg.watermarks.get(partition))
        return _json(web, user_document(user_id, state, seg.segment_name, as_of, src.half_lives))
