"""Shared set-up for credential tests and bench/credentials.py: a personalized card and its chain facts.

Personalization here is the minimal admin sequence (generate the 9A key, write DID and credential); the real
counter flow with the city server lives in terminal/flows (enrollment) and server/.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from cityid import jose
from cityid.chain.view import StatusRef
from cityid.credential import VCT, CitizenClaims, IssuedCredential, LocalSigner, issue
from cityid.keys import P256PublicKey
from cityid.piv import Slot
from terminal.sessions.citizen import CitizenSession
from terminal.sessions.piv import PivSession
from tests.doubles.static_view import StaticChainView

NOW = 1_800_000_000
AUDIENCE = "https://kiosk.busan.go.kr/busan-kiosk-001"
ISSUER_DID = "did:ethr:0x7a69:0x1111111111111111111111111111111111111111"
CITIZEN_DID = "did:ethr:0x7a69:0x3333333333333333333333333333333333333333"
STATUS = StatusRef(31337, "0x" + "44" * 20, 1, 42)
ISSUER_KEY = ec.derive_private_key(0xB05A, ec.SECP256R1())
ISSUER_POINT = P256PublicKey.from_crypto(ISSUER_KEY.public_key()).point
CITIZEN = CitizenClaims.derive(
    "김", "민수", date(1955, 3, 1), "Haeundae-gu", True, "BS-0000-0042", as_of=date(2027, 1, 1)
)
PIN = "123456"


def personalize(
    connection: object,
    claims: CitizenClaims = CITIZEN,
    now: int = NOW,
    *,
    issuer_did: str = ISSUER_DID,
    issuer_key: ec.EllipticCurvePrivateKey = ISSUER_KEY,
    status: StatusRef = STATUS,
    enroll: Callable[[bytes], str] | None = None,
    authorization_root: P256PublicKey | None = None,
) -> IssuedCredential:
    """Generate the card's holder key, ``enroll`` it (→ citizen DID; default: the fixed test DID), issue a
    credential bound to it and write DID + credential to the card.

    With ``authorization_root`` the card is personalized as the counter does it now: the root is written
    (terminal authentication required from then on) and the holder key is the citizen applet's own
    presentation-binding key, not PIV 9A."""
    piv = PivSession(connection)  # type: ignore[arg-type]
    piv.authenticate_management_key()
    holder = P256PublicKey.from_crypto(piv.generate_key(Slot.AUTHENTICATION)).point
    citizen = CitizenSession(connection)  # type: ignore[arg-type]
    citizen.authenticate()
    if authorization_root is not None:
        holder = citizen.generate_binding_key().point
        citizen.put_authorization_root(authorization_root, now - 86400)
    citizen_did = enroll(holder) if enroll else CITIZEN_DID
    cred = issue(claims, holder, issuer_did, status, LocalSigner(issuer_key), now - 86400, now + 86400 * 365,
                 citizen_did)  # fmt: skip
    citizen.put_did(citizen_did)
    citizen.put_credential(cred.record)
    citizen.activate()  # the last personalization step (docs/card-profile.md, ACTIVATE)
    return cred


@dataclass
class ChainIssuer:
    """The city on a real chain (embedded or anvil): issuer key published and accredited, one status list."""

    registrar: Any
    issuer_key: ec.EllipticCurvePrivateKey
    list_id: int
    next_index: int = 0

    @classmethod
    def setup(cls, network: Any, client: Any, account: Any) -> ChainIssuer:
        from server.chain.registrar import Registrar

        registrar = Registrar(network, client, account)
        key = ec.generate_private_key(ec.SECP256R1())
        registrar.publish_issuer_key(P256PublicKey.from_crypto(key.public_key()).point)
        registrar.accredit_issuer(registrar.did, VCT, valid_until=int(time.time()) + 10 * 365 * 86400)
        return cls(registrar, key, registrar.create_status_list())

    def personalize(
        self, connection: object, claims: CitizenClaims = CITIZEN
    ) -> tuple[IssuedCredential, str]:
        """Enroll a new citizen identity with the card's key and write its credential; returns (cred, did)."""
        from eth_account import Account

        identity = Account.create().address
        index, self.next_index = self.next_index, self.next_index + 1

        def enroll(point: bytes) -> str:
            self.registrar.enroll_citizens([(identity, [point])])
            return str(self.registrar.did_of(identity))

        cred = personalize(connection, claims, int(time.time()), issuer_did=self.registrar.did,
                           issuer_key=self.issuer_key, status=self.registrar.status_ref(self.list_id, index),
                           enroll=enroll)  # fmt: skip
        return cred, identity


def holder_point(cred: IssuedCredential) -> bytes:
    return jose.point_from_jwk(cred.payload["cnf"]["jwk"])


def chain_for(cred: IssuedCredential) -> StaticChainView:
    """A warm chain view that knows the issuer, trusts it for the vct and lists the card's key."""
    return StaticChainView(
        issuer_keys={ISSUER_DID: (ISSUER_POINT,)},
        trusted={(ISSUER_DID, VCT)},
        holder_keys={CITIZEN_DID: (holder_point(cred),)},
    )
