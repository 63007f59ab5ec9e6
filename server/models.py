"""SQLAlchemy 2.0 models: the minimum the issuer keeps (docs/server.md §Storage).

No personal claim is ever stored: a credential row holds its id, the citizen DID, the status list position,
the hash of the issuer JWT and issuance metadata. The audit log records who did what to which credential/DID.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class CredentialState(StrEnum):
    """Lifecycle of a credential (docs/server.md §States)."""

    PENDING = "pending"  # status index allocated, not yet returned signed
    ISSUED = "issued"
    SUSPENDED = "suspended"
    REVOKED = "revoked"
    SUPERSEDED = "superseded"  # replaced by a re-issue or a re-enrollment of the same card

    @property
    def live(self) -> bool:
        return self in (CredentialState.PENDING, CredentialState.ISSUED, CredentialState.SUSPENDED)


class TerminalRole(StrEnum):
    """What a terminal may act on (docs/server.md §Scopes)."""

    COUNTER = "counter"
    SUPERVISOR = "supervisor"


class Terminal(Base):
    """A counter terminal allowed to call the API; requests are signed with its P-256 key. It belongs to an
    ``office`` and has a ``role`` (docs/server.md §Scopes)."""

    __tablename__ = "terminals"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key_pem: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    office: Mapped[str] = mapped_column(String(64), default="main", server_default="main")
    role: Mapped[str] = mapped_column(String(16), default="counter", server_default="counter")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TerminalAuthorization(Base):
    """What a terminal may ask citizen cards for, and where that authorization stands on chain: one bit in
    the terminal status list of CityStatusRegistry (docs/card-profile.md §Terminal authentication). A set
    bit (revoked) takes the terminal out of service: its certificate is not renewed."""

    __tablename__ = "terminal_authorizations"

    name: Mapped[str] = mapped_column(ForeignKey("terminals.name"), primary_key=True)
    claims: Mapped[str] = mapped_column(Text)  # claim names joined by "\n"
    status_list_id: Mapped[int] = mapped_column(Integer)
    status_index: Mapped[int] = mapped_column(Integer)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Citizen(Base):
    """A citizen DID the registrar controls (identity address without a private key)."""

    __tablename__ = "citizens"

    did: Mapped[str] = mapped_column(String(128), primary_key=True)
    identity: Mapped[str] = mapped_column(String(42), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Credential(Base):
    """One issued (or being issued) credential: identifiers, status position, hash, metadata — no claims."""

    __tablename__ = "credentials"
    __table_args__ = (
        UniqueConstraint("status_list_id", "status_index", name="uq_status_position"),
        Index("ix_credentials_card", "card_serial_hash"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    request_fingerprint: Mapped[str] = mapped_column(String(64))  # sha256(card key || serial), no claims
    citizen_did: Mapped[str] = mapped_column(ForeignKey("citizens.did"), index=True)
    card_key: Mapped[str] = mapped_column(String(130))  # hex SEC1 uncompressed P-256 point (public key)
    card_serial_hash: Mapped[str] = mapped_column(String(64))
    status_list_id: Mapped[int] = mapped_column(Integer)
    status_index: Mapped[int] = mapped_column(Integer)
    vct: Mapped[str] = mapped_column(String(200))
    credential_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    state: Mapped[str] = mapped_column(String(16), default=CredentialState.PENDING.value)
    key_on_chain: Mapped[bool] = mapped_column(Boolean, default=False)
    supersedes: Mapped[str | None] = mapped_column(String(36), default=None)
    terminal: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    issue_count: Mapped[int] = mapped_column(Integer, default=0)  # signatures made for this id (retries)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class StatusAllocator(Base):
    """Next free index per status list; advanced in the same transaction that creates the credential row."""

    __tablename__ = "status_allocator"

    list_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    next_index: Mapped[int] = mapped_column(Integer, default=0)
    capacity: Mapped[int] = mapped_column(Integer)


class FidoKey(Base):
    """A FIDO2 credential public key registered on a citizen DID."""

    __tablename__ = "fido_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    citizen_did: Mapped[str] = mapped_column(ForeignKey("citizens.did"), index=True)
    point: Mapped[str] = mapped_column(String(130), unique=True)
    fido_credential_id_hash: Mapped[str] = mapped_column(String(64))
    registered_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEntry(Base):
    """Who did what, when, with which outcome. Never claims, never PINs."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))  # the terminal (or "admin")
    clerk: Mapped[str] = mapped_column(String(64), default="", server_default="")  # signed-in clerk
    action: Mapped[str] = mapped_column(String(32))
    credential_id: Mapped[str | None] = mapped_column(String(36), default=None)
    citizen_did: Mapped[str | None] = mapped_column(String(128), default=None)
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(String(200), default="")


class UsedNonce(Base):
    """Request nonces already seen, per terminal (single use within the auth window)."""

    __tablename__ = "used_nonces"

    terminal: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class RevocationLookup(Base):
    """A citizen's lost-card lookup: HMAC(server secret, normalised family name, given name, birth date and
    the revocation password) → DID. Neither the claims nor the password are stored (docs/server.md
    §Lost-card report)."""

    __tablename__ = "revocation_lookups"

    lookup: Mapped[str] = mapped_column(String(64), primary_key=True)
    citizen_did: Mapped[str] = mapped_column(ForeignKey("citizens.did"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class OutboxKind(StrEnum):
    """What an outbox row asks the chain writer to do (docs/server.md §Chain outbox)."""

    ENROLL = "enroll"  # publish a P-256 key on a citizen identity (enrollBatch)
    REVOKE_KEY = "revoke_key"  # revoke a key attribute (revokeKeysBatch)
    STATUS = "status"  # set a status-list entry (setStatus, many bits per storage word)


class OutboxState(StrEnum):
    PENDING = "pending"  # waiting for the next batch window
    SENT = "sent"  # in a signed batch transaction (broadcast or about to be)
    CONFIRMED = "confirmed"  # mined and buried under the configured depth
    FAILED = "failed"  # the chain refuses this row on its own (e.g. resume of a revoked entry)


class OutboxEntry(Base):
    """One chain write, added in the same database transaction as the server state it mirrors."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_state", "state", "id"),
        Index("ix_outbox_entry", "list_id", "status_index", "id"),  # `chain check`: status entries in order
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default=OutboxState.PENDING.value)
    identity: Mapped[str | None] = mapped_column(String(42), default=None)  # enroll / revoke_key
    point: Mapped[str | None] = mapped_column(String(130), default=None)  # hex SEC1 P-256 point
    list_id: Mapped[int | None] = mapped_column(Integer, default=None)  # status
    status_index: Mapped[int | None] = mapped_column(Integer, default=None)
    status_value: Mapped[int | None] = mapped_column(Integer, default=None)
    credential_id: Mapped[str | None] = mapped_column(String(36), default=None, index=True)
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("outbox_batches.id"), default=None, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    done_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)


# `chain check`: keys replayed per identity, case-insensitively, in id order (server/outbox/check.py).
Index("ix_outbox_identity", func.lower(OutboxEntry.identity), OutboxEntry.id)


class BatchState(StrEnum):
    SIGNED = "signed"  # signed bytes stored; broadcast may or may not have happened
    SENT = "sent"  # the node accepted the bytes
    MINED = "mined"  # receipt seen, not yet deep enough
    CONFIRMED = "confirmed"  # receipt at the configured depth
    ABANDONED = "abandoned"  # its nonce went to something else: rows went back to pending


class OutboxBatch(Base):
    """One signed transaction of the chain writer: the exact bytes are stored BEFORE broadcasting, so a
    retry or a new writer after a crash re-sends the same bytes (one nonce, one hash, never two effects)."""

    __tablename__ = "outbox_batches"
    __table_args__ = (Index("ix_outbox_batches_state", "state", "nonce"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    sender: Mapped[str] = mapped_column(String(42))
    nonce: Mapped[int] = mapped_column(Integer)
    tx_hash: Mapped[str] = mapped_column(String(66), unique=True)
    raw_tx: Mapped[str] = mapped_column(Text)
    gas_limit: Mapped[int] = mapped_column(Integer)
    items: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=BatchState.SIGNED.value)
    block_number: Mapped[int | None] = mapped_column(Integer, default=None)
    block_hash: Mapped[str | None] = mapped_column(String(66), default=None)
    gas_used: Mapped[int | None] = mapped_column(Integer, default=None)
    reapplied: Mapped[int] = mapped_column(Integer, default=0)  # times re-sent after a reorg / lost state
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class CertificateAnchor(Base):
    """One submitted certificate hash (docs/certificates.md §Server): pending (no root), sending (root,
    no block) or anchored."""

    __tablename__ = "certificate_anchors"

    document_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # hex SHA-256
    terminal: Mapped[str] = mapped_column(String(64), index=True)
    queued_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    root: Mapped[str | None] = mapped_column(String(64), index=True, default=None)
    proof: Mapped[str | None] = mapped_column(Text, default=None)  # hex siblings, concatenated
    block: Mapped[int | None] = mapped_column(Integer, default=None)
