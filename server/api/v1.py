"""``/v1`` — the counter-terminal API (docs/server.md §API). Every route needs a signed request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from cityid.jose import b64url_encode
from server.api import validate as v
from server.auth import AuthError, RequestAuthenticator, SignedRequest
from server.outbox import OutboxWriter, progress
from server.outbox.store import just_queued, progress_for
from server.service import (
    CredentialInfo,
    Enrollment,
    IssuerService,
    NotFoundError,
    Presence,
    ValidationError,
)
from server.service.card_keys import CardKeyService
from server.service.terminals import TerminalAuthorizations

bp = Blueprint("v1", __name__, url_prefix="/v1")


def _service() -> IssuerService:
    return current_app.extensions["cityid.service"]


@bp.before_request
def _authenticate() -> ResponseReturnValue | None:
    auth: RequestAuthenticator = current_app.extensions["cityid.auth"]
    path = request.path + (f"?{request.query_string.decode('latin-1')}" if request.query_string else "")
    signed = SignedRequest(request.method, path, request.headers, request.get_data(cache=True))
    try:
        g.terminal = auth.authenticate(signed)
    except AuthError as exc:
        if exc.reason == "unavailable":
            return jsonify(error="storage_unavailable", message=str(exc)), 503
        return jsonify(error="unauthenticated", reason=exc.reason, message=str(exc)), 401
    if request.method != "GET" and not g.terminal.clerk:
        # Every state change names the clerk in the signed request (docs/server.md §Scopes).
        return jsonify(error="unauthenticated", reason="missing_clerk",
                       message="state changes need the signed-in clerk (X-CityID-Clerk)"), 401  # fmt: skip
    return None


def _presence(body: dict[str, Any]) -> Presence | None:
    """The optional ``presence`` proof of the citizen (docs/server.md §Scopes)."""
    return Presence.parse(body["presence"]) if body.get("presence") is not None else None


def _json() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if data is None:
        raise ValidationError("request body must be JSON (Content-Type: application/json)")
    return v.body_object(data)


def _writer() -> OutboxWriter:
    return current_app.extensions["cityid.outbox"]


def _chain(
    credential_ids: Sequence[str] = (), point: bytes | None = None, queued: Sequence[int] | None = None
) -> dict[str, Any]:
    """Where the request's chain writes stand (docs/server.md §Chain outbox). ``?wait=<seconds>`` (≤ 30;
    default the server's ``chain_wait_ms``) waits for them to be confirmed first. ``queued``: the rows this
    request has just committed (then no query)."""
    writer = _writer()
    raw = request.args.get("wait")
    try:
        wait = float(raw) if raw is not None else _service().config.chain_wait_ms / 1000
    except ValueError as exc:
        raise ValidationError("wait must be a number of seconds") from exc
    if not 0 <= wait <= 30:
        raise ValidationError("wait must be within 0..30 seconds")
    if queued is not None:
        now = just_queued(queued, writer.window_s)
    else:
        now = progress_for(writer.db, credential_ids, point, writer.window_s)  # one query
    if wait > 0 and not now.final:
        return writer.wait(now.ids, wait).to_json()
    if not now.final:
        writer.nudge()
    return now.to_json()


def _enrollment_json(e: Enrollment) -> dict[str, Any]:
    return {
        "credential_id": e.credential_id,
        "citizen_did": e.citizen_did,
        "status": {"list_id": e.status_ref.list_id, "index": e.status_ref.index, "uri": e.status_ref.uri},
        "credential_hash": e.credential_hash,
        "expires_at": e.expires_at.isoformat(),
        "vct": e.record.vct,
        "card_record": b64url_encode(e.record.encode()),
        "retried": e.retried,
        "chain": _chain([e.credential_id], queued=e.outbox_ids),
    }


def _info_json(i: CredentialInfo) -> dict[str, Any]:
    return {
        "credential_id": i.credential_id,
        "citizen_did": i.citizen_did,
        "state": i.state.value,
        "status": {"list_id": i.status_ref.list_id, "index": i.status_ref.index, "uri": i.status_ref.uri},
        "vct": i.vct,
        "issued_at": i.issued_at.isoformat() if i.issued_at else None,
        "expires_at": i.expires_at.isoformat() if i.expires_at else None,
        "chain": {"state": i.chain},
    }


@bp.get("/terminal/certificate")
def terminal_certificate() -> ResponseReturnValue:
    """This terminal's current certificate (docs/server.md §Terminal certificates): signed only while its
    authorization stands on chain; 403 ``terminal_not_authorized`` otherwise."""
    terminals: TerminalAuthorizations = current_app.extensions["cityid.terminals"]
    cert = terminals.certificate(g.terminal.terminal)
    return jsonify(
        certificate=b64url_encode(cert.encode()),
        not_after=cert.body.not_after,
        authority_key=terminals.root.hex(),
    ), 200


@bp.post("/enrollments")
def enroll() -> ResponseReturnValue:
    body = _json()
    v.only_keys(
        body,
        ("idempotency_key", "claims", "card_public_key", "card_serial"),
        ("citizen_did", "presence", "revocation_password"),
    )
    did = v.did(body["citizen_did"]) if body.get("citizen_did") is not None else None
    result = _service().enroll(
        g.terminal,
        v.idempotency_key(body["idempotency_key"]),
        body["claims"],
        v.p256_jwk(body["card_public_key"], "card_public_key"),
        v.card_serial(body["card_serial"]),
        did,
        _presence(body),
        body.get("revocation_password"),
    )
    return jsonify(_enrollment_json(result)), 200 if result.retried else 201


@bp.post("/credentials/<cid>/reissue")
def reissue(cid: str) -> ResponseReturnValue:
    body = _json()
    v.only_keys(body, ("idempotency_key", "claims"), ("presence",))
    result = _service().reissue(
        g.terminal,
        v.credential_id(cid),
        v.idempotency_key(body["idempotency_key"]),
        body["claims"],
        _presence(body),
    )
    return jsonify(_enrollment_json(result)), 200 if result.retried else 201


@bp.post("/revocations")
def revoke() -> ResponseReturnValue:
    body = _json()
    v.only_keys(body, ("credential_ids", "reason"), ("presence",))
    ids = body["credential_ids"]
    if not isinstance(ids, list) or not 0 < len(ids) <= v.MAX_BATCH:
        raise ValidationError(f"credential_ids must be a list of 1-{v.MAX_BATCH} ids")
    ids = [v.credential_id(i) for i in ids]
    if body["reason"] not in ("lost", "revoked"):
        raise ValidationError("reason must be 'lost' or 'revoked'")
    revoked = _service().revoke(g.terminal, ids, body["reason"], _presence(body))
    # "revoked" here is the database's word; chain.state says whether kiosks already see it (never
    # "confirmed" before the status bits are mined at the configured depth).
    return jsonify(revoked=revoked, requested=len(set(ids)), chain=_chain(ids)), 200


def _optional_json() -> dict[str, Any]:
    """Suspend/resume take an empty body or ``{"presence": …}``."""
    body = _json() if request.get_data(cache=True) else {}
    v.only_keys(body, (), ("presence",))
    return body


def _changed(info: CredentialInfo) -> ResponseReturnValue:
    chain = _chain([info.credential_id])
    return jsonify({**_info_json(_service().status(info.credential_id)), "chain": chain}), 200


@bp.post("/credentials/<cid>/suspend")
def suspend(cid: str) -> ResponseReturnValue:
    body = _optional_json()
    return _changed(_service().suspend(g.terminal, v.credential_id(cid), _presence(body)))


@bp.post("/credentials/<cid>/resume")
def resume(cid: str) -> ResponseReturnValue:
    body = _optional_json()
    return _changed(_service().resume(g.terminal, v.credential_id(cid), _presence(body)))


@bp.get("/outbox")
def outbox() -> ResponseReturnValue:
    """``?ids=1,2,3[&wait=s]`` → where these chain writes stand (``confirmed`` only at the set depth)."""
    raw = request.args.get("ids", "")
    try:
        ids = [int(x) for x in raw.split(",") if x]
    except ValueError as exc:
        raise ValidationError("ids must be comma-separated integers") from exc
    if not 0 < len(ids) <= v.MAX_BATCH * 2:
        raise ValidationError("1-1000 outbox ids")
    wait = request.args.get("wait")
    writer = _writer()
    try:
        if wait is not None:
            try:
                seconds = float(wait)
            except ValueError as exc:
                raise ValidationError("wait must be a number of seconds") from exc
            if not 0 <= seconds <= 30:
                raise ValidationError("wait must be within 0..30 seconds")
            got = writer.wait(ids, seconds)
        else:
            got = progress(writer.db, ids, writer.window_s)
    except KeyError as exc:
        raise NotFoundError("unknown outbox id") from exc
    return jsonify(got.to_json()), 200


@bp.get("/credentials/<cid>/status")
def status(cid: str) -> ResponseReturnValue:
    cid = v.credential_id(cid)
    chain = _chain([cid])
    return jsonify({**_info_json(_service().status(cid)), "chain": chain}), 200


@bp.post("/citizens/<path:did>/fido-keys")
def fido_key(did: str) -> ResponseReturnValue:
    body = _json()
    v.only_keys(body, ("public_key", "credential_id"), ("presence",))
    point = v.p256_jwk(body["public_key"], "public_key")
    fido_id = v.b64url_bytes(body["credential_id"], "credential_id")
    created = _service().register_fido_key(g.terminal, v.did(did), point, fido_id, _presence(body))
    return jsonify(citizen_did=did, registered=created, chain=_chain(point=point)), 201 if created else 200


#: The answer to every lost-card report, found or not (docs/server.md §Lost-card report).
LOST_CARD_ANSWER = {
    "result": "received",
    "message": "if these details match a card, its credentials and card keys are now revoked",
}


@bp.post("/lost-card-reports")
def lost_card_report() -> ResponseReturnValue:
    """A clerk reports a card lost from the citizen's name, birth date and revocation password."""
    body = _json()
    v.only_keys(body, ("family_name", "given_name", "birthdate", "password"))
    _service().report_lost(
        g.terminal, body["family_name"], body["given_name"], body["birthdate"], body["password"]
    )
    return jsonify(LOST_CARD_ANSWER), 200


def _card_keys() -> CardKeyService:
    return current_app.extensions["cityid.card_keys"]


@bp.post("/card-keys/authenticate")
def card_key_authenticate() -> ResponseReturnValue:
    """Answer a card's 9B witness (docs/server.md §Card management keys): the counter relays the card's
    step-1 answer and sends ``7C{80 witness, 81 challenge}``, then checks the card answered ``response``.
    The serial travels in the body, not the path, to stay out of access logs."""
    body = _json()
    v.only_keys(body, ("card_serial", "algorithm", "witness"))
    algorithm = body["algorithm"]
    if not isinstance(algorithm, int) or isinstance(algorithm, bool):
        raise ValidationError("algorithm must be an integer (8: AES-128)")
    answer = _card_keys().authenticate(
        g.terminal, v.card_serial(body["card_serial"]), algorithm, v.b64url_bytes(body["witness"], "witness")
    )
    return jsonify(
        witness=b64url_encode(answer.witness),
        challenge=b64url_encode(answer.challenge),
        response=b64url_encode(answer.expected),
    ), 200


@bp.post("/card-keys/set")
def card_key_set() -> ResponseReturnValue:
    """The SET MANAGEMENT KEY data for a card not enrolled yet (the counter relays it, never keeps it)."""
    body = _json()
    v.only_keys(body, ("card_serial",))
    data = _card_keys().set_key_data(g.terminal, v.card_serial(body["card_serial"]))
    return jsonify(set_management_key=b64url_encode(data)), 200
