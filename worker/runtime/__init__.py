"""The worker's runtime: the parts ``worker.app`` builds and wires around the pure core (:mod:`worker.changes`).

- :mod:`.records` (pure) — broker records in as :class:`~worker.changes.InputRecord`, a batch's result out as the
  outbox's records; header names.
- :mod:`.positions` (pure) — each consumed partition's position: gates, what the changelog holds, what the group
  was told, when to probe the broker.
- :mod:`.faust_internals` — every touch of Faust's private API, with the version range it was checked against.
- :mod:`.collector` — the cyclic garbage collector's settings for a long-running worker.
- :mod:`.recovery` — reading a table's changelog to its real end, with the local copy.
- :mod:`.topology` — the Faust app, its topics and tables.
- :mod:`.handoff` — whole fetches of the consumed topics, from Faust's consumer to the pipeline.
- :mod:`.ownership` — assignment changes, readiness, shutdown.
- :mod:`.pipeline` — one batch through the gate, the core and the outbox; the model in use.
- :mod:`.housekeeping` — the one-second tick.
- :mod:`.training` — the trainer's host.
"""
