"""Shared set-up for credential tests and bench/credentials.py: a personalized card and its chain facts.

Personalization here is the minimal admin sequence (generate the 9A key, write DID and credential); the real
counter flow with the city server lives in terminal/flows (enrollment) and server/.
"""

from __future__ import annotations

from datetime import date

from cryptography.hazmat.primitives.asymmetric import ec

from cityid import jose
from cityid.chainview import StatusRef
from cityid.credential import VCT, CitizenClaims, IssuedCredential, LocalSigner, issue
from cityid.piv import Slot
from terminal.sessions.citizen import CitizenSession
from terminal.sessions.piv import PivSession
from terminal.verifier.static import StaticChainView

NOW = 1_800_000_000
AUDIENCE = "https://kiosk.busan.go.kr/busan-kiosk-001"
ISSUER_DID = "did:ethr:0x7a69:0x1111111111111111111111111111111111111111"
CITIZEN_DID = "did:ethr:0x7a69:0x3333333333333333333333333333333333333333"
STATUS = StatusRef(31337, "0x" + "44" * 20, 1, 42)
ISSUER_KEY = ec.derive_private_key(0xB05A, ec.SECP256R1())
ISSUER_POINT = jose.point_from_public_key(ISSUER_KEY.public_key())
CITIZEN = CitizenClaims.derive(
    "김", "민수", date(1955, 3, 1), "Haeundae-gu", True, "BS-0000-0042", as_of=date(2027, 1, 1)
)
PIN = "123456"


def personalize(connection: object, claims: CitizenClaims = CITIZEN, now: int = NOW) -> IssuedCredential:
    """Generate the card's holder key, issue a credential bound to it and write DID + credential."""
    piv = PivSession(connection)  # type: ignore[arg-type]
    piv.authenticate_management_key()
    holder = jose.point_from_public_key(piv.generate_key(Slot.AUTHENTICATION))
    cred = issue(claims, holder, ISSUER_DID, STATUS, LocalSigner(ISSUER_KEY), now - 86400, now + 86400 * 365,
                 CITIZEN_DID)  # fmt: skip
    citizen = CitizenSession(connection)  # type: ignore[arg-type]
    citizen.authenticate()
    citizen.put_did(CITIZEN_DID)
    citizen.put_credential(cred.record)
    return cred


def holder_point(cred: IssuedCredential) -> bytes:
    return jose.point_from_jwk(cred.payload["cnf"]["jwk"])


def chain_for(cred: IssuedCredential) -> StaticChainView:
    """A warm chain view that knows the issuer, trusts it for the vct and lists the card's key."""
    return StaticChainView(
        issuer_keys={ISSUER_DID: (ISSUER_POINT,)},
        trusted={(ISSUER_DID, VCT)},
        holder_keys={CITIZEN_DID: (holder_point(cred),)},
    )
