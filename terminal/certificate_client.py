"""The kiosk's side of the city server's certificate routes (docs/certificates.md §Server).

:class:`ServerAnchorQueue` submits certificate hashes (a signed terminal request, :mod:`cityid.requestsig`);
:class:`HttpKioskDirectory` and :class:`HttpProofSource` read the public routes — what any verifier (the
``kiosk verify-certificate`` command, a counter's scanner) uses to check a certificate.
"""

from __future__ import annotations

import re
from typing import Any

import requests

from cityid.certificate import AnchorProof
from cityid.errors import CityIdError
from cityid.keys import KeyFormatError, P256PublicKey
from terminal.server_client import ServerClient, ServerError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def proof_from_json(data: Any) -> AnchorProof | None:
    """The proof in an anchor-status answer, or None while queued; ServerError on a malformed answer."""
    if not isinstance(data, dict) or data.get("status") not in ("queued", "anchored"):
        raise ServerError(200, "bad_answer", "malformed anchor status")
    if data["status"] != "anchored":
        return None
    root, siblings = data.get("root"), data.get("proof")
    if (
        not isinstance(root, str)
        or not _HEX64.match(root)
        or not isinstance(siblings, list)
        or len(siblings) > 32
    ):
        raise ServerError(200, "bad_answer", "malformed anchor proof")
    if not all(isinstance(s, str) and _HEX64.match(s) for s in siblings):
        raise ServerError(200, "bad_answer", "malformed anchor proof")
    return AnchorProof(bytes.fromhex(root), tuple(bytes.fromhex(s) for s in siblings))


class ServerAnchorQueue(ServerClient):
    """:class:`terminal.flows.certificate.AnchorQueueClient` on ``POST /certificates/anchors``."""

    def submit(self, document_hash: bytes) -> AnchorProof | None:
        return proof_from_json(
            self._call("POST", "/certificates/anchors", {"document_hash": document_hash.hex()})[1]
        )

    def proof(self, document_hash: bytes) -> AnchorProof | None:
        try:
            return proof_from_json(self._call("GET", f"/certificates/anchors/{document_hash.hex()}")[1])
        except ServerError as exc:
            if exc.status == 404:
                return None
            raise


class _Public:
    def __init__(self, base_url: str, timeout: float = 5.0, session: Any = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = session or requests.Session()

    def _get(self, route: str) -> dict[str, Any] | None:
        try:
            resp = self._http.request("GET", self.base_url + route, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ServerError(0, "unreachable", type(exc).__name__) from exc
        if resp.status_code == 404:
            return None
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.status_code != 200 or not isinstance(data, dict):
            raise ServerError(resp.status_code, "bad_answer", f"HTTP {resp.status_code}")
        return data


class HttpKioskDirectory(_Public):
    """:class:`cityid.certificate.KioskDirectory` on ``GET /certificates/kiosks/<id>`` (cached per run)."""

    def __init__(self, base_url: str, timeout: float = 5.0, session: Any = None) -> None:
        super().__init__(base_url, timeout, session)
        self._cache: dict[str, P256PublicKey | None] = {}

    def kiosk_key(self, kiosk_id: str) -> P256PublicKey | None:
        if kiosk_id not in self._cache:
            data = self._get(f"/certificates/kiosks/{kiosk_id}")
            try:
                self._cache[kiosk_id] = None if data is None else P256PublicKey.from_jwk(data.get("jwk"))
            except KeyFormatError as exc:
                raise CityIdError("the city server sent a malformed kiosk key") from exc
        return self._cache[kiosk_id]


class HttpProofSource(_Public):
    """:class:`cityid.certificate.ProofSource` on ``GET /certificates/anchors/<hash>``."""

    def proof(self, document_hash: bytes) -> AnchorProof | None:
        data = self._get(f"/certificates/anchors/{document_hash.hex()}")
        return None if data is None else proof_from_json(data)
