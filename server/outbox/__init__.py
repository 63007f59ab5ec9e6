"""The chain outbox (docs/server.md §Chain outbox): rows written with the server's own state, drained in
batches by one chain writer per city (:class:`~server.outbox.writer.OutboxWriter`)."""

from server.outbox.store import ChainWrite, enqueue_key, enqueue_revoke_key, enqueue_status, progress, stats
from server.outbox.writer import OutboxWriter

__all__ = [
    "ChainWrite",
    "OutboxWriter",
    "enqueue_key",
    "enqueue_revoke_key",
    "enqueue_status",
    "progress",
    "stats",
]
