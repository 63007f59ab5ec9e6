"""The issuing service: enrollment, re-issue, revocation, suspension, status and FIDO key registration.

Independent of HTTP (the Flask blueprints in ``server.api`` are thin). Crash-safety rules
(docs/server.md §Idempotency):

* The status index is allocated in the same transaction that creates the pending credential row under its
  idempotency key (unique); a retry finds that row and reuses its credential id, DID and index.
* Chain writes happen between transactions and are idempotent, with a DB flag recording completion, so a
  crash between them repeats the chain write rather than skipping it.
* A retry after success signs again for the SAME credential id and status index: one live credential.
* Claims live only in memory while the credential is signed; they are never logged, stored or audited.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from cityid import credential as vc
from cityid.chain.view import ChainError, CredentialStatus, StatusRef
from cityid.citizen import CredentialRecord
from cityid.errors import CityIdError
from server.chain.gateway import ChainGateway
from server.config import ServerConfig
from server.db import Database, StorageError
from server.keys import IssuerSigner
from server.models import (
    AuditEntry,
    Citizen,
    Credential,
    CredentialState,
    FidoKey,
    StatusAllocator,
    utcnow,
)

logger = logging.getLogger(__name__)

#: Claims the counter sends; age_over_19/65 are derived by the server from the birthdate at issuance.
INPUT_CLAIMS = ("family_name", "given_name", "birthdate", "district", "busan_resident", "card_number")


class ServiceError(CityIdError):
    """A request the service refuses; ``status`` is the HTTP status, ``code`` a stable machine code."""

    status = 400
    code = "bad_request"


class ValidationError(ServiceError):
    status = 400
    code = "invalid_request"


class NotFoundError(ServiceError):
    status = 404
    code = "not_found"


class ConflictError(ServiceError):
    status = 409
    code = "conflict"


class CapacityError(ServiceError):
    status = 507
    code = "status_list_full"


class ChainUnavailableError(ServiceError):
    status = 502
    code = "chain_unavailable"


class StorageUnavailableError(ServiceError):
    status = 503
    code = "storage_unavailable"


@dataclass(frozen=True, slots=True)
class Enrollment:
    """What the counter terminal writes to the card, and the identifiers it may keep."""

    credential_id: str
    citizen_did: str
    status_ref: StatusRef
    record: CredentialRecord
    credential_hash: str
    expires_at: dt.datetime
    retried: bool


@dataclass(frozen=True, slots=True)
class CredentialInfo:
    """Status lookup answer (no claims: the server has none)."""

    credential_id: str
    citizen_did: str
    state: CredentialState
    status_ref: StatusRef
    vct: str
    issued_at: dt.datetime | None
    expires_at: dt.datetime | None


def card_fingerprint(card_point: bytes, card_serial: bytes) -> str:
    return hashlib.sha256(b"card-key|" + card_point + b"|" + card_serial).hexdigest()


def serial_hash(card_serial: bytes) -> str:
    return hashlib.sha256(b"card-serial|" + card_serial).hexdigest()


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite returns naive datetimes: they were stored as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


class IssuerService:
    """Issues citizen credentials and keeps their status on chain."""

    def __init__(
        self,
        db: Database,
        chain: ChainGateway,
        signer: IssuerSigner,
        config: ServerConfig,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.db = db
        self.chain = chain
        self.signer = signer
        self.config = config
        self.clock = clock
        self.vct = vc.VCT
        self.issuer_did: str = ""
        #: Test hook: called with a step name; raising there simulates a crash after that step.
        self.fault: Callable[[str], None] = lambda step: None

    # --- start-up --------------------------------------------------------------------------------

    def start(self) -> str:
        """Publish the issuer key on its DID and accredit it for the citizen vct (idempotent)."""
        try:
            self.issuer_did = self.chain.publish_issuer(self.signer.public_point, self.vct)
        except ChainError as exc:
            raise ChainUnavailableError(str(exc)) from exc
        self._audit_now("server", "issuer.publish", outcome="ok", did=self.issuer_did)
        return self.issuer_did

    # --- helpers ---------------------------------------------------------------------------------

    def _status_ref(self, row: Credential) -> StatusRef:
        return StatusRef(
            self.chain.chain_id, self.chain.status_registry, row.status_list_id, row.status_index
        )

    @staticmethod
    def _audit(
        s: Session,
        actor: str,
        action: str,
        outcome: str = "ok",
        cred: str | None = None,
        did: str | None = None,
        detail: str = "",
    ) -> None:
        s.add(
            AuditEntry(
                actor=actor,
                action=action,
                credential_id=cred,
                citizen_did=did,
                outcome=outcome,
                detail=detail[:200],
            )
        )

    def _audit_now(self, actor: str, action: str, **kw: Any) -> None:
        try:
            with self.db.sessions.begin() as s:
                self._audit(s, actor, action, **kw)
        except SQLAlchemyError:
            logger.exception("audit write failed for %s", action)

    def _chain(self, what: str, fn: Callable[[], None], actor: str, cred: str | None = None) -> None:
        try:
            fn()
        except ChainError as exc:
            self._audit_now(actor, what, outcome="error", cred=cred, detail="chain unavailable")
            raise ChainUnavailableError(f"chain write failed ({what}); retry later") from exc

    def _allocate(self, s: Session) -> int:
        """Take the next status index inside the caller's transaction (rolled back with it)."""
        list_id = self.config.status_list_id
        index = s.execute(
            update(StatusAllocator)
            .where(StatusAllocator.list_id == list_id, StatusAllocator.next_index < StatusAllocator.capacity)
            .values(next_index=StatusAllocator.next_index + 1)
            .returning(StatusAllocator.next_index)
        ).scalar_one_or_none()
        if index is None:
            if s.get(StatusAllocator, list_id) is None:
                raise StorageUnavailableError("database not initialised (run: city-server db init)")
            raise CapacityError(f"status list {list_id} is full")
        return index - 1

    def _validate_claims(self, claims: object) -> dict[str, Any]:
        """Check the counter's claims; age flags are derived here from the birthdate, never trusted."""
        if not isinstance(claims, dict):
            raise ValidationError("claims must be an object")
        missing = [k for k in INPUT_CLAIMS if k not in claims]
        extra = [k for k in claims if k not in INPUT_CLAIMS]
        if missing or extra:
            raise ValidationError(
                "claims must be exactly "
                + ", ".join(INPUT_CLAIMS)
                + (f" (missing {', '.join(missing)})" if missing else "")
                + (f" (unexpected {', '.join(sorted(map(str, extra)))})" if extra else "")
            )
        self._citizen_claims(claims, self.clock().date())
        return claims

    @staticmethod
    def _citizen_claims(claims: dict[str, Any], as_of: dt.date) -> vc.CitizenClaims:
        bd = claims["birthdate"]
        try:
            birthdate = dt.date.fromisoformat(bd) if isinstance(bd, str) and len(bd) == 10 else None
        except ValueError:
            birthdate = None
        if birthdate is None or birthdate > as_of:
            raise ValidationError("invalid claims: birthdate must be a past date YYYY-MM-DD")
        if not isinstance(claims["busan_resident"], bool):
            raise ValidationError("invalid claims: busan_resident must be a boolean")
        try:
            out = vc.CitizenClaims.derive(
                claims["family_name"],
                claims["given_name"],
                birthdate,
                claims["district"],
                claims["busan_resident"],
                claims["card_number"],
                as_of,
            )
            out.validate()
        except (vc.CredentialError, TypeError, AttributeError) as exc:
            # Never echo a claim value (errors end up in terminal logs): drop quoted parts.
            raise ValidationError(
                "invalid claims: " + re.sub(r"'[^']*'|\"[^\"]*\"", "(value)", str(exc))
            ) from exc
        return out

    def _sign(
        self,
        row: Credential,
        claims: dict[str, Any],
        card_point: bytes,
        issued_at: dt.datetime,
        expires_at: dt.datetime,
    ) -> vc.IssuedCredential:
        citizen = self._citizen_claims(claims, issued_at.date())
        try:
            return vc.issue(
                citizen,
                card_point,
                self.issuer_did,
                self._status_ref(row),
                self.signer,
                iat=int(issued_at.timestamp()),
                exp=int(expires_at.timestamp()),
                citizen_did=row.citizen_did,
            )
        except vc.CredentialError as exc:
            raise ValidationError(f"cannot issue: {exc}") from exc

    # --- enrollment ------------------------------------------------------------------------------

    def enroll(
        self,
        terminal: str,
        idempotency_key: str,
        claims: object,
        card_point: bytes,
        card_serial: bytes,
        citizen_did: str | None = None,
    ) -> Enrollment:
        """Enroll a card (the clerk checked the citizen in person); safe to retry with the same key."""
        parsed = self._validate_claims(claims)
        fingerprint = card_fingerprint(card_point, card_serial)
        try:
            row, retried = self._reserve(
                terminal, idempotency_key, fingerprint, card_point, card_serial, citizen_did
            )
        except IntegrityError:  # a concurrent request with the same key won the insert: it is ours now
            row, retried = self._reserve(
                terminal, idempotency_key, fingerprint, card_point, card_serial, citizen_did
            )
        self.fault("reserved")
        return self._complete(terminal, row, parsed, card_point, retried)

    def _reserve(
        self,
        terminal: str,
        key: str,
        fingerprint: str,
        card_point: bytes,
        card_serial: bytes,
        citizen_did: str | None,
    ) -> tuple[Credential, bool]:
        try:
            with self.db.sessions.begin() as s:
                row = s.scalar(select(Credential).where(Credential.idempotency_key == key))
                if row is not None:
                    if row.request_fingerprint != fingerprint or row.terminal != terminal:
                        raise ConflictError("idempotency key already used for another card, key or terminal")
                    if row.state not in (CredentialState.PENDING, CredentialState.ISSUED):
                        raise ConflictError(f"credential {row.id} is {row.state}; start a new enrollment")
                    self._audit(s, terminal, "enroll.retry", cred=row.id, did=row.citizen_did)
                    return row, True
                if citizen_did is not None:
                    citizen = s.get(Citizen, citizen_did)
                    if citizen is None:
                        raise NotFoundError("unknown citizen DID")
                else:
                    identity = self.chain.new_citizen_identity()
                    citizen = Citizen(did=self.chain.did_for(identity), identity=identity)
                    s.add(citizen)
                row = Credential(
                    id=str(uuid.uuid4()),
                    idempotency_key=key,
                    request_fingerprint=fingerprint,
                    citizen_did=citizen.did,
                    card_key=card_point.hex(),
                    card_serial_hash=serial_hash(card_serial),
                    status_list_id=self.config.status_list_id,
                    status_index=self._allocate(s),
                    vct=self.vct,
                    state=CredentialState.PENDING.value,
                    terminal=terminal,
                )
                s.add(row)
                s.flush()
                self._audit(
                    s,
                    terminal,
                    "enroll.reserve",
                    cred=row.id,
                    did=row.citizen_did,
                    detail=f"status index {row.status_index}",
                )
                return row, False
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise StorageUnavailableError("database unavailable") from exc

    def _supersede_others(self, terminal: str, row: Credential) -> None:
        """Retire other live credentials of this card (or the one re-issued): status bits first."""
        with self.db.sessions() as s:
            others = list(
                s.scalars(
                    select(Credential).where(
                        Credential.card_serial_hash == row.card_serial_hash,
                        Credential.id != row.id,
                        Credential.created_at <= row.created_at,
                        Credential.state.in_([st.value for st in CredentialState if st.live]),
                    )
                )
            )
            if row.supersedes:
                prev = s.get(Credential, row.supersedes)
                if prev is not None and CredentialState(prev.state).live and prev not in others:
                    others.append(prev)
            identities = {
                c.did: c.identity
                for c in s.scalars(select(Citizen).where(Citizen.did.in_([o.citizen_did for o in others])))
            }
        if not others:
            return
        by_list: dict[int, list[int]] = {}
        for o in others:
            by_list.setdefault(o.status_list_id, []).append(o.status_index)
        for list_id, indexes in by_list.items():
            self._chain(
                "supersede",
                lambda li=list_id, ix=indexes: self.chain.set_status(li, ix, CredentialStatus.REVOKED),
                terminal,
                row.id,
            )
        stale_keys = [
            (identities[o.citizen_did], bytes.fromhex(o.card_key))
            for o in others
            if o.card_key != row.card_key
        ]
        if stale_keys:
            self._chain("supersede", lambda: self.chain.revoke_keys(stale_keys), terminal, row.id)
        with self.db.sessions.begin() as s:
            for o in others:
                s.execute(
                    update(Credential)
                    .where(Credential.id == o.id)
                    .values(state=CredentialState.SUPERSEDED.value, updated_at=utcnow())
                )
                self._audit(s, terminal, "supersede", cred=o.id, did=o.citizen_did, detail=f"by {row.id}")

    def _complete(
        self, terminal: str, row: Credential, claims: Any, card_point: bytes, retried: bool
    ) -> Enrollment:
        self._supersede_others(terminal, row)
        self.fault("superseded")
        with self.db.sessions() as s:
            state = s.scalar(select(Credential.state).where(Credential.id == row.id))
        if state not in (CredentialState.PENDING, CredentialState.ISSUED):
            raise ConflictError(f"credential {row.id} is {state}; start a new enrollment")
        if not row.key_on_chain:
            with self.db.sessions() as s:
                citizen = s.get(Citizen, row.citizen_did)
                assert citizen is not None
                identity = citizen.identity
            self._chain(
                "enroll.chain", lambda: self.chain.register_keys([(identity, card_point)]), terminal, row.id
            )
            self.fault("chain")
            with self.db.sessions.begin() as s:
                s.execute(update(Credential).where(Credential.id == row.id).values(key_on_chain=True))
        issued_at = _aware(row.issued_at) or self.clock().replace(microsecond=0)
        expires_at = _aware(row.expires_at) or issued_at + dt.timedelta(
            days=self.config.credential_validity_days
        )
        issued = self._sign(row, claims, card_point, issued_at, expires_at)
        del claims
        cred_hash = issued.credential_hash
        self.fault("signed")
        try:
            with self.db.sessions.begin() as s:
                current = s.get(Credential, row.id, with_for_update=True)
                assert current is not None
                if current.state not in (CredentialState.PENDING, CredentialState.ISSUED):
                    raise ConflictError(f"credential {row.id} became {current.state} meanwhile")
                current.state = CredentialState.ISSUED.value
                current.credential_hash = cred_hash
                current.issued_at = issued_at
                current.expires_at = expires_at
                current.issue_count = current.issue_count + 1
                self._audit(
                    s,
                    terminal,
                    "enroll.issue",
                    cred=row.id,
                    did=row.citizen_did,
                    detail=f"issue #{current.issue_count}",
                )
        except SQLAlchemyError as exc:
            raise StorageUnavailableError("database unavailable") from exc
        logger.info("issued credential %s (status index %d)", row.id, row.status_index)
        return Enrollment(
            row.id, row.citizen_did, self._status_ref(row), issued.record, cred_hash, expires_at, retried
        )

    # --- re-issue --------------------------------------------------------------------------------

    def reissue(self, terminal: str, credential_id: str, idempotency_key: str, claims: object) -> Enrollment:
        """New credential (new id and status index) for the same DID and card key; the old one is retired."""
        parsed = self._validate_claims(claims)
        try:
            with self.db.sessions.begin() as s:
                row = s.scalar(select(Credential).where(Credential.idempotency_key == idempotency_key))
                if row is not None:
                    if row.supersedes != credential_id:
                        raise ConflictError("idempotency key already used for another request")
                    if row.state not in (CredentialState.PENDING, CredentialState.ISSUED):
                        raise ConflictError(f"credential {row.id} is {row.state}")
                    self._audit(s, terminal, "reissue.retry", cred=row.id, did=row.citizen_did)
                    retried = True
                else:
                    old = s.get(Credential, credential_id)
                    if old is None:
                        raise NotFoundError("unknown credential")
                    if old.state not in (CredentialState.ISSUED, CredentialState.SUSPENDED):
                        raise ConflictError(f"credential {old.id} is {old.state}; it cannot be re-issued")
                    row = Credential(
                        id=str(uuid.uuid4()),
                        idempotency_key=idempotency_key,
                        request_fingerprint=old.request_fingerprint,
                        citizen_did=old.citizen_did,
                        card_key=old.card_key,
                        card_serial_hash=old.card_serial_hash,
                        status_list_id=self.config.status_list_id,
                        status_index=self._allocate(s),
                        vct=self.vct,
                        state=CredentialState.PENDING.value,
                        key_on_chain=old.key_on_chain,
                        supersedes=old.id,
                        terminal=terminal,
                    )
                    s.add(row)
                    s.flush()
                    self._audit(
                        s,
                        terminal,
                        "reissue.reserve",
                        cred=row.id,
                        did=row.citizen_did,
                        detail=f"replaces {old.id}",
                    )
                    retried = False
        except (IntegrityError, SQLAlchemyError) as exc:
            raise StorageUnavailableError("database unavailable or concurrent request; retry") from exc
        return self._complete(terminal, row, parsed, bytes.fromhex(row.card_key), retried)

    # --- status changes --------------------------------------------------------------------------

    def _load(self, s: Session, ids: Sequence[str]) -> list[Credential]:
        rows = []
        for cid in ids:
            row = s.get(Credential, cid)
            if row is None:
                raise NotFoundError(f"unknown credential {cid}")
            rows.append(row)
        return rows

    def revoke(self, terminal: str, credential_ids: Sequence[str], reason: str) -> list[str]:
        """Revoke a batch: status bits in one chain call per list; for lost cards also the card keys."""
        if reason not in ("lost", "revoked"):
            raise ValidationError("reason must be 'lost' or 'revoked'")
        with self.db.sessions() as s:
            rows = self._load(s, list(dict.fromkeys(credential_ids)))
            todo = [
                r
                for r in rows
                if r.state in (CredentialState.PENDING, CredentialState.ISSUED, CredentialState.SUSPENDED)
            ]
            identities = {
                c.did: c.identity
                for c in s.scalars(select(Citizen).where(Citizen.did.in_([r.citizen_did for r in rows])))
            }
        by_list: dict[int, list[int]] = {}
        for r in todo:
            by_list.setdefault(r.status_list_id, []).append(r.status_index)
        for list_id, indexes in by_list.items():
            self._chain(
                "revoke",
                lambda li=list_id, ix=indexes: self.chain.set_status(li, ix, CredentialStatus.REVOKED),
                terminal,
            )
        if reason == "lost":
            # A lost card's key is revoked even if the credential was already revoked/superseded.
            keys = list(dict.fromkeys((identities[r.citizen_did], bytes.fromhex(r.card_key)) for r in rows))
            self._chain("revoke.key", lambda: self.chain.revoke_keys(keys), terminal)
        with self.db.sessions.begin() as s:
            for r in rows:
                if r in todo:
                    s.execute(
                        update(Credential)
                        .where(Credential.id == r.id)
                        .values(state=CredentialState.REVOKED.value, updated_at=utcnow())
                    )
                self._audit(
                    s,
                    terminal,
                    "revoke",
                    cred=r.id,
                    did=r.citizen_did,
                    detail=f"reason={reason}" + ("" if r in todo else f"; was {r.state}"),
                )
        return [r.id for r in todo]

    def _set(self, terminal: str, credential_id: str, to: CredentialState) -> CredentialInfo:
        allowed_from = (
            CredentialState.ISSUED if to is CredentialState.SUSPENDED else CredentialState.SUSPENDED
        )
        with self.db.sessions() as s:
            (row,) = self._load(s, [credential_id])
        action = "suspend" if to is CredentialState.SUSPENDED else "resume"
        if row.state != to.value:
            if row.state != allowed_from.value:
                raise ConflictError(f"credential is {row.state}; cannot {action}")
            bit = CredentialStatus.SUSPENDED if to is CredentialState.SUSPENDED else CredentialStatus.VALID
            self._chain(
                action,
                lambda: self.chain.set_status(row.status_list_id, [row.status_index], bit),
                terminal,
                row.id,
            )
            with self.db.sessions.begin() as s:
                n = s.execute(
                    update(Credential)
                    .where(Credential.id == row.id, Credential.state == allowed_from.value)
                    .values(state=to.value, updated_at=utcnow())
                ).rowcount
                if n != 1:
                    raise ConflictError("credential changed meanwhile; retry")
                self._audit(s, terminal, action, cred=row.id, did=row.citizen_did)
        return self.status(credential_id)

    def suspend(self, terminal: str, credential_id: str) -> CredentialInfo:
        return self._set(terminal, credential_id, CredentialState.SUSPENDED)

    def resume(self, terminal: str, credential_id: str) -> CredentialInfo:
        return self._set(terminal, credential_id, CredentialState.ISSUED)

    def status(self, credential_id: str) -> CredentialInfo:
        try:
            with self.db.sessions() as s:
                (row,) = self._load(s, [credential_id])
        except SQLAlchemyError as exc:
            raise StorageUnavailableError("database unavailable") from exc
        return CredentialInfo(
            row.id,
            row.citizen_did,
            CredentialState(row.state),
            self._status_ref(row),
            row.vct,
            _aware(row.issued_at),
            _aware(row.expires_at),
        )

    # --- FIDO keys -------------------------------------------------------------------------------

    def register_fido_key(
        self, terminal: str, citizen_did: str, point: bytes, fido_credential_id: bytes
    ) -> bool:
        """Add a FIDO2 credential's P-256 key to the citizen DID; returns False if it was already there."""
        with self.db.sessions() as s:
            citizen = s.get(Citizen, citizen_did)
            if citizen is None:
                raise NotFoundError("unknown citizen DID")
            existing = s.scalar(select(FidoKey).where(FidoKey.point == point.hex()))
            identity = citizen.identity
        if existing is not None:
            if existing.citizen_did != citizen_did:
                raise ConflictError("this FIDO key is registered to another DID")
            self._audit_now(terminal, "fido.register", outcome="ok", did=citizen_did, detail="already")
            return False
        self._chain("fido.register", lambda: self.chain.register_keys([(identity, point)]), terminal)
        try:
            with self.db.sessions.begin() as s:
                if existing is None:
                    s.add(
                        FidoKey(
                            citizen_did=citizen_did,
                            point=point.hex(),
                            fido_credential_id_hash=hashlib.sha256(fido_credential_id).hexdigest(),
                        )
                    )
                self._audit(s, terminal, "fido.register", did=citizen_did)
        except IntegrityError:
            return False
        return True


def sweep_pending(db: Database, older_than: dt.timedelta, now: dt.datetime | None = None) -> list[str]:
    """Close enrollments left ``pending`` longer than ``older_than`` (the client never came back).

    A pending credential was never delivered (the answer is sent only after the row is marked issued), so
    it is closed in the database only: state ``revoked``, audited; its status index stays accounted for.
    A late retry with its idempotency key gets 409 and starts a new enrollment.
    """
    cutoff = (now or utcnow()) - older_than
    with db.sessions.begin() as s:
        rows = list(
            s.scalars(
                select(Credential).where(
                    Credential.state == CredentialState.PENDING.value, Credential.created_at < cutoff
                )
            )
        )
        for r in rows:
            r.state = CredentialState.REVOKED.value
            s.add(
                AuditEntry(
                    actor="admin",
                    action="sweep.pending",
                    credential_id=r.id,
                    citizen_did=r.citizen_did,
                    outcome="ok",
                    detail="never completed",
                )
            )
    return [r.id for r in rows]


__all__ = [
    "ChainUnavailableError",
    "ConflictError",
    "CredentialInfo",
    "Enrollment",
    "IssuerService",
    "NotFoundError",
    "ServiceError",
    "StorageError",
    "StorageUnavailableError",
    "ValidationError",
]
