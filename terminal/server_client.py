"""The counter terminal's client for the city server: every request signed with the terminal's P-256 key.

Signing follows :mod:`cityid.requestsig` (docs/server.md §Authentication). The transport is ``requests``;
anything with ``request(method, url, data=, headers=, timeout=)`` returning a requests-like response works.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cityid.citizen import CredentialRecord
from cityid.errors import CityIdError, DecodeError
from cityid.jose import b64url_decode, b64url_encode, der_to_raw_p256, jwk_from_point
from cityid.keys import P256PublicKey
from cityid.piv import CARD_MANAGEMENT_KEY_ALGORITHM, Algorithm
from cityid.requestsig import (
    HEADER_CLERK,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TERMINAL,
    HEADER_TIMESTAMP,
    canonical_presence,
    canonical_request,
)
from cityid.terminal_cert import TerminalCertificate
from terminal.sessions.mgmt import Exchange

logger = logging.getLogger(__name__)

_ACTING_CLERK: contextvars.ContextVar[str | None] = contextvars.ContextVar("cityid_clerk", default=None)


@contextlib.contextmanager
def acting_clerk(clerk: str | None) -> Iterator[None]:
    """Name ``clerk`` in every server request made inside the block (the counter's signed-in clerk)."""
    token = _ACTING_CLERK.set(clerk)
    try:
        yield
    finally:
        _ACTING_CLERK.reset(token)


#: How long the counter waits for the city server before the clerk is told and offered a retry (issue 15
#: item 4): a frozen server is an error on screen within this time. Requests are idempotent (enrollment
#: under its idempotency key), so the retry finishes what the server may have done meanwhile.
COUNTER_TIMEOUT = 5.0


class ServerError(CityIdError):
    """The city server refused the request or was unreachable; ``status``: HTTP status (0: none)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        super().__init__(
            f"city server: {message} ({code})" if status else f"city server unreachable: {message}"
        )

    @property
    def retryable(self) -> bool:
        """Worth retrying with the same idempotency key (network, chain or storage trouble)."""
        return self.status == 0 or self.status >= 500


@dataclass(frozen=True, slots=True)
class EnrollmentResult:
    """The server's answer to an enrollment or re-issue."""

    credential_id: str
    citizen_did: str
    status_list_id: int
    status_index: int
    credential_hash: str
    record: CredentialRecord
    retried: bool
    #: Where the chain writes stand (docs/server.md §Chain outbox): ``{state, outbox_ids, eta_seconds}``.
    chain: dict[str, Any] = field(default_factory=dict)

    @property
    def on_chain(self) -> bool:
        return self.chain.get("state", "confirmed") == "confirmed"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EnrollmentResult:
        try:
            return cls(
                credential_id=str(data["credential_id"]),
                citizen_did=str(data["citizen_did"]),
                status_list_id=int(data["status"]["list_id"]),
                status_index=int(data["status"]["index"]),
                credential_hash=str(data["credential_hash"]),
                record=CredentialRecord.decode(b64url_decode(data["card_record"])),
                retried=bool(data["retried"]),
                chain=dict(data.get("chain") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"malformed enrollment answer: {exc}") from exc


def chain_note(chain: dict[str, Any]) -> str:
    """The clerk's line for a chain write: "on chain" or "on chain in ~N s" (docs/server.md §Chain outbox)."""
    state = chain.get("state", "confirmed")
    if state == "confirmed":
        return "on chain"
    if state == "failed":
        return "chain write refused — see the server log"
    return f"on chain in ~{max(1, round(float(chain.get('eta_seconds', 1))))} s"
@dataclass(frozen=True, slots=True)
class TerminalCertificateAnswer:
    """The server's answer to a certificate renewal: the certificate and the authorization root key."""

    certificate: TerminalCertificate
    authority_key: P256PublicKey

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TerminalCertificateAnswer:
        try:
            cert = TerminalCertificate.decode(b64url_decode(str(data["certificate"])))
            root = P256PublicKey.from_point(bytes.fromhex(str(data["authority_key"])))
        except (KeyError, TypeError, ValueError) as exc:  # DecodeError is a ValueError
            raise DecodeError(f"malformed terminal certificate answer: {exc}") from exc
        if not cert.verify(root):
            raise DecodeError("the terminal certificate does not verify with the authorization key")
        return cls(cert, root)


class TerminalKeyError(CityIdError, ValueError):
    """The terminal key file is missing, unreadable, not a P-256 PEM private key, or its password is wrong."""


def load_terminal_key(path: str, password: str | None = None) -> ec.EllipticCurvePrivateKey:
    """Read the terminal's PEM private key (maybe encrypted); :class:`TerminalKeyError` names the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise TerminalKeyError(f"terminal key {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except (ValueError, TypeError):  # not PEM, unsupported, or a wrong/missing password
        raise TerminalKeyError(
            f"terminal key {path} does not load: not a PEM private key, or CITYID_TERMINAL_KEY_PASSWORD "
            "is wrong or missing"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise TerminalKeyError(f"terminal key {path}: must be a P-256 private key")
    return key


def sign_request(
    key: ec.EllipticCurvePrivateKey,
    terminal: str,
    method: str,
    path: str,
    body: bytes,
    now: float | None = None,
    clerk: str | None = None,
) -> dict[str, str]:
    """The authentication headers for one request (fresh 128-bit nonce); ``clerk`` is signed too."""
    ts = int(time.time() if now is None else now)
    nonce = b64url_encode(secrets.token_bytes(16))
    der = key.sign(canonical_request(method, path, ts, nonce, body, clerk), ec.ECDSA(hashes.SHA256()))
    headers = {
        HEADER_TERMINAL: terminal,
        HEADER_TIMESTAMP: str(ts),
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: b64url_encode(der_to_raw_p256(der)),
    }
    if clerk:
        headers[HEADER_CLERK] = clerk
    return headers


def presence_proof(
    sign_raw: Callable[[bytes], bytes],
    point: bytes,
    terminal: str,
    citizen_did: str,
    action: str,
    now: float | None = None,
) -> dict[str, Any]:
    """The citizen's ``presence`` object: ``sign_raw(message)`` is an ES256 signature (raw r||s) by the
    citizen's current card or FIDO key over :func:`cityid.requestsig.canonical_presence`."""
    ts = int(time.time() if now is None else now)
    nonce = b64url_encode(secrets.token_bytes(16))
    sig = sign_raw(canonical_presence(terminal, citizen_did, action, ts, nonce))
    return {"key": jwk_from_point(point), "timestamp": ts, "nonce": nonce, "signature": b64url_encode(sig)}


class ServerClient:
    """Signed JSON calls to ``city-server`` (one method per API route)."""

    def __init__(
        self,
        base_url: str,
        terminal: str,
        key: ec.EllipticCurvePrivateKey,
        *,
        timeout: float = 30.0,
        session: Any | None = None,
        clock: Callable[[], float] = time.time,
        clerk: str | None = None,
    ) -> None:
        #: The signed-in clerk named (and signed) in every request; set by the counter per request.
        self.clerk = clerk
        self.base_url = base_url.rstrip("/")
        self._prefix = urlsplit(self.base_url).path
        self.terminal = terminal
        self._key = key
        self.timeout = timeout
        self._http = session or requests.Session()
        self._clock = clock
        self.last_chain: dict[str, Any] = {}

    def _call(
        self, method: str, route: str, payload: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        headers = sign_request(
            self._key, self.terminal, method, self._prefix + route, body, self._clock(),
            _ACTING_CLERK.get() or self.clerk,
        )  # fmt: skip
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            resp = self._http.request(
                method, self.base_url + route, data=body, headers=headers, timeout=self.timeout
            )
        except requests.Timeout as exc:  # per socket operation: connect, then each read (not the total)
            raise ServerError(0, "timeout", f"no answer within {self.timeout:g} s") from exc
        except requests.RequestException as exc:
            raise ServerError(0, "unreachable", type(exc).__name__) from exc
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ServerError(resp.status_code, "bad_answer", f"non-JSON answer (HTTP {resp.status_code})")
        if resp.status_code >= 400:
            raise ServerError(
                resp.status_code, str(data.get("error", "error")), str(data.get("message", "refused"))
            )
        return resp.status_code, data

    def enroll(
        self,
        idempotency_key: str,
        claims: dict[str, Any],
        card_point: bytes,
        card_serial: bytes,
        citizen_did: str | None = None,
        presence: dict[str, Any] | None = None,
        revocation_password: str | None = None,
        wait: float | None = None,
    ) -> EnrollmentResult:
        """Enroll; the answer comes at once (``chain.state`` pending) unless ``wait`` seconds are given, then
        after the card key is confirmed on chain (or the wait ran out)."""
        payload: dict[str, Any] = {
            "idempotency_key": idempotency_key,
            "claims": claims,
            "card_public_key": jwk_from_point(card_point),
            "card_serial": card_serial.hex(),
        }
        if citizen_did:
            payload["citizen_did"] = citizen_did
        if presence:
            payload["presence"] = presence
        if revocation_password:
            payload["revocation_password"] = revocation_password  # never logged
        route = "/v1/enrollments" + (f"?wait={wait:g}" if wait is not None else "")
        return EnrollmentResult.from_json(self._call("POST", route, payload)[1])

    def outbox(self, outbox_ids: list[int], wait: float | None = None) -> dict[str, Any]:
        """Where chain writes stand: ``{"state": pending|sent|confirmed|failed, …}``; ``wait`` seconds for
        them to be confirmed first."""
        route = "/v1/outbox?ids=" + ",".join(str(int(i)) for i in outbox_ids)
        if wait is not None:
            route += f"&wait={wait:g}"
        return self._call("GET", route)[1]

    def report_lost(self, family_name: str, given_name: str, birthdate: str, password: str) -> str:
        """Lost-card report from the citizen's details and revocation password; the server answers the
        same whether or not they match (docs/server.md §Lost-card report)."""
        payload = {
            "family_name": family_name,
            "given_name": given_name,
            "birthdate": birthdate,
            "password": password,
        }
        return str(self._call("POST", "/v1/lost-card-reports", payload)[1].get("message", ""))

    def reissue(
        self,
        credential_id: str,
        idempotency_key: str,
        claims: dict[str, Any],
        presence: dict[str, Any] | None = None,
    ) -> EnrollmentResult:
        route = f"/v1/credentials/{credential_id}/reissue"
        payload: dict[str, Any] = {"idempotency_key": idempotency_key, "claims": claims}
        if presence:
            payload["presence"] = presence
        return EnrollmentResult.from_json(self._call("POST", route, payload)[1])

    def revoke(
        self,
        credential_ids: list[str],
        reason: str,
        presence: dict[str, Any] | None = None,
        wait: float | None = None,
    ) -> list[str]:
        """Revoke; ``last_chain`` then says whether kiosks already see it (``wait`` seconds for that)."""
        payload: dict[str, Any] = {"credential_ids": credential_ids, "reason": reason}
        if presence:
            payload["presence"] = presence
        route = "/v1/revocations" + (f"?wait={wait:g}" if wait is not None else "")
        data = self._call("POST", route, payload)[1]
        self.last_chain = dict(data.get("chain") or {})  # kiosks refuse the card once this is confirmed
        return list(data.get("revoked", []))

    def suspend(self, credential_id: str, presence: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"presence": presence} if presence else {}
        return self._call("POST", f"/v1/credentials/{credential_id}/suspend", body)[1]

    def resume(self, credential_id: str, presence: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"presence": presence} if presence else {}
        return self._call("POST", f"/v1/credentials/{credential_id}/resume", body)[1]

    def status(self, credential_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/credentials/{credential_id}/status")[1]

    def terminal_certificate(self) -> TerminalCertificateAnswer:
        """This terminal's fresh certificate (``GET /v1/terminal/certificate``; docs/server.md §Terminal
        certificates). ServerError 403 ``terminal_not_authorized`` once it is taken out of service."""
        return TerminalCertificateAnswer.from_json(self._call("GET", "/v1/terminal/certificate")[1])

    def register_fido_key(
        self,
        citizen_did: str,
        point: bytes,
        fido_credential_id: bytes,
        presence: dict[str, Any] | None = None,
    ) -> bool:
        payload: dict[str, Any] = {
            "public_key": jwk_from_point(point),
            "credential_id": b64url_encode(fido_credential_id),
        }
        if presence:
            payload["presence"] = presence
        status, _ = self._call("POST", f"/v1/citizens/{citizen_did}/fido-keys", payload)
        return status == 201

    # --- per-card management keys (docs/server.md §Card management keys) ----------------------------

    def card_key_answer(self, card_serial: bytes, algorithm: int, encrypted_witness: bytes) -> Exchange:
        """The city HSM's answer to the card's 9B witness (the counter relays it; no key reaches it)."""
        payload = {
            "card_serial": card_serial.hex(),
            "algorithm": int(algorithm),
            "witness": b64url_encode(encrypted_witness),
        }
        data = self._call("POST", "/v1/card-keys/authenticate", payload)[1]
        try:
            witness, challenge = b64url_decode(data["witness"]), b64url_decode(data["challenge"])
            return Exchange(witness, challenge, b64url_decode(data["response"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"malformed management-key answer: {exc}") from exc

    def card_key_set_data(self, card_serial: bytes) -> bytes:
        """The SET MANAGEMENT KEY data ``08 9B 10 K_card`` for a card not yet enrolled. It carries the card's
        key in the clear (the APDU does): send it to the card at once and drop it — never keep or log it."""
        data = self._call("POST", "/v1/card-keys/set", {"card_serial": card_serial.hex()})[1]
        try:
            return b64url_decode(data["set_management_key"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"malformed management-key answer: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ServerCardKey:
    """The card's own management key, answered by the city HSM through ``server`` (a
    :class:`terminal.sessions.mgmt.Responder`): the counter relays the 9B exchange without holding it."""

    server: ServerClient
    serial: bytes
    algorithm: Algorithm = CARD_MANAGEMENT_KEY_ALGORITHM

    def respond(self, encrypted_witness: bytes) -> Exchange:
        return self.server.card_key_answer(self.serial, self.algorithm, encrypted_witness)


@dataclass(frozen=True, slots=True)
class ServerCardKeys:
    """Every card's own management key through the city HSM (a
    :class:`terminal.flows.personalize.CardKeySource`): what the counter and ``cardtool --server`` use."""

    server: ServerClient

    def responder(self, serial: bytes) -> ServerCardKey:
        return ServerCardKey(self.server, serial)

    def set_key_data(self, serial: bytes) -> bytes:
        return self.server.card_key_set_data(serial)
