"""``/certificates`` — anchoring queue for kiosks, and public verification (docs/certificates.md §Server).

- ``POST /certificates/anchors`` (signed terminal request): queue a certificate hash (202 queued,
  200 anchored).
- ``GET /certificates/anchors/<hash hex>`` (public): its status and, once anchored, the Merkle proof.
- ``GET /certificates/kiosks/<kiosk id>`` (public): the kiosk's public key while the city authorises it.
- ``GET /certificates/verify`` (public page) and ``POST /certificates/verify`` (form or JSON ``{"qr": …}``):
  the full check (signature, kiosk, expiry, anchor on chain) and the printed facts.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, render_template_string, request
from flask.typing import ResponseReturnValue

from cityid.certificate import (
    CertificateRejected,
    CertificateVerifier,
    ChainAnchorChecker,
    VerifiedCertificate,
)
from server.auth import AuthError, RequestAuthenticator, SignedRequest
from server.certificates import (
    DEFAULT_MAX_BATCH,
    DEFAULT_WINDOW_S,
    AnchorQueue,
    DbKioskDirectory,
    QueueProofSource,
)
from server.db import Database

logger = logging.getLogger(__name__)
bp = Blueprint("certificates", __name__, url_prefix="/certificates")
_HEX32 = re.compile(r"^[0-9a-f]{64}$")
_EXT = "cityid.certificates"


class CertificateServices:
    """What the routes use: the queue, the kiosk directory and (with a chain) the verifier."""

    def __init__(self, queue: AnchorQueue, kiosks: DbKioskDirectory, verifier: CertificateVerifier | None):
        self.queue = queue
        self.kiosks = kiosks
        self.verifier = verifier


def install(app: Flask, db: Database, chain: Any, start: bool = True) -> CertificateServices:
    """Register the blueprint and start the queue (window/batch from env ``CITY_CERT_WINDOW_S`` /
    ``CITY_CERT_MAX_BATCH``). ``chain`` is the server's gateway; anchoring needs its ``registrar``.
    ``start=False``: the chain writer flushes the queue in its windows (docs/server.md §Chain outbox)."""
    registrar = getattr(chain, "registrar", None)
    queue = AnchorQueue(
        db,
        registrar,
        window_s=float(os.environ.get("CITY_CERT_WINDOW_S", DEFAULT_WINDOW_S)),
        max_batch=int(os.environ.get("CITY_CERT_MAX_BATCH", DEFAULT_MAX_BATCH)),
    )
    kiosks = DbKioskDirectory(db)
    verifier = None
    if registrar is not None:
        checker = ChainAnchorChecker(registrar.client, registrar.network)
        verifier = CertificateVerifier(kiosks, checker, QueueProofSource(queue))
    services = CertificateServices(queue, kiosks, verifier)
    app.extensions[_EXT] = services
    app.register_blueprint(bp)
    if start:
        queue.start()
    return services


def _services() -> CertificateServices:
    return current_app.extensions[_EXT]


def _error(status: int, code: str, message: str) -> ResponseReturnValue:
    return jsonify(error=code, message=message), status


@bp.post("/anchors")
def submit_anchor() -> ResponseReturnValue:
    auth: RequestAuthenticator = current_app.extensions["cityid.auth"]
    path = request.path + (f"?{request.query_string.decode('latin-1')}" if request.query_string else "")
    signed = SignedRequest(request.method, path, request.headers, request.get_data(cache=True))
    try:
        terminal = auth.authenticate(signed).terminal
    except AuthError as exc:
        if exc.reason == "unavailable":
            return _error(503, "storage_unavailable", str(exc))
        return jsonify(error="unauthenticated", reason=exc.reason, message=str(exc)), 401
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or set(body) != {"document_hash"}:
        return _error(400, "invalid_request", 'body must be {"document_hash": "<64 hex>"}')
    doc = body["document_hash"]
    if not isinstance(doc, str) or not _HEX32.match(doc):
        return _error(400, "invalid_request", "document_hash must be 64 lower-case hex characters")
    ticket = _services().queue.submit(bytes.fromhex(doc), terminal)
    return jsonify(ticket.to_json()), 200 if ticket.status == "anchored" else 202


@bp.get("/anchors/<doc>")
def anchor_status(doc: str) -> ResponseReturnValue:
    if not _HEX32.match(doc):
        return _error(400, "invalid_request", "document hash must be 64 lower-case hex characters")
    ticket = _services().queue.lookup(bytes.fromhex(doc))
    if ticket is None:
        return _error(404, "not_found", "no certificate with this hash was submitted")
    return jsonify(ticket.to_json()), 200


@bp.get("/kiosks/<kiosk>")
def kiosk_key(kiosk: str) -> ResponseReturnValue:
    key = _services().kiosks.kiosk_key(kiosk[:64])
    if key is None:
        return _error(404, "not_found", "kiosk unknown or not authorised")
    return jsonify(kiosk=kiosk, jwk=key.jwk()), 200


def _verified_json(v: VerifiedCertificate) -> dict[str, Any]:
    return {
        "valid": True,
        "confirmation": v.confirmation,
        "service": v.service,
        "kiosk": v.kiosk,
        "issued_at": v.issued_at,
        "expires_at": v.expires_at,
        "anchored_at": v.anchored_at,
        "facts": v.facts,
    }


_PAGE = """<!doctype html>
<html lang="ko"><head><meta charset="utf-8"><title>증명서 확인 · Certificate check</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}
textarea{width:100%;height:8rem}.ok{color:#0a5c2f}.bad{color:#9b1c1c}th{text-align:left;padding-right:1rem}</style>
</head><body><h1>부산시 증명서 확인 <small>Busan certificate check</small></h1>
<form method="post"><label for="qr">QR 내용 · QR text</label>
<textarea id="qr" name="qr" required>{{ qr }}</textarea><button type="submit">확인 · Verify</button></form>
{% if result %}<h2 class="ok" id="result">유효 · Valid</h2><table>
<tr><th>확인번호 · No.</th><td>{{ result.confirmation }}</td></tr>
<tr><th>서비스 · Service</th><td>{{ result.service }}</td></tr>
<tr><th>발급 · Kiosk</th><td>{{ result.kiosk }}</td></tr>
{% for k, v in result.facts.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}
</table>{% elif error %}<h2 class="bad" id="result">확인 불가 · Not valid ({{ error.reason.value }})</h2>
<p>{{ error }}</p>{% endif %}</body></html>"""


@bp.route("/verify", methods=["GET", "POST"])
def verify_page() -> ResponseReturnValue:
    services = _services()
    wants_json = request.is_json
    if request.method == "GET":
        return render_template_string(_PAGE, qr="", result=None, error=None)
    qr = (request.get_json(silent=True) or {}).get("qr") if wants_json else request.form.get("qr")
    if not isinstance(qr, str):
        return _error(400, "invalid_request", 'send {"qr": "<QR text>"} or the form field qr')
    if services.verifier is None:
        return _error(503, "chain_unavailable", "this server has no chain to verify against")
    try:
        result = services.verifier.verify(qr)
    except CertificateRejected as exc:
        if wants_json:
            return jsonify(valid=False, reason=exc.reason.value, message=str(exc)), 200
        return render_template_string(_PAGE, qr=qr[:4096], result=None, error=exc)
    if wants_json:
        return jsonify(_verified_json(result)), 200
    return render_template_string(_PAGE, qr=qr[:4096], result=result, error=None)
