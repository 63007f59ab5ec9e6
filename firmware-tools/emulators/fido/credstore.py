"""Credential ids, credential keys and the discoverable-credential list.

Credential keys are never stored: every key is derived from the authenticator's master key, the RP id hash
and a random nonce carried in the credential id (the "key wrapping" most security keys use, CTAP 2.1 §6.1.2
step 16 note). A credential id is 34 bytes::

    kind(1) | flags(1) | nonce(16) | LEFT(HMAC-SHA-256(master, "id" | kind | flags | nonce | rpIdHash), 16)

``kind`` 0x01 is a server-side credential (valid wherever the MAC checks), 0x02 a discoverable one (valid
only while it is in the stored list, so deleting it really revokes it). ``flags`` carry credProtect (bits
0–1), hmac-secret (bit 2) and the algorithm (bit 3: EdDSA). authenticatorReset rotates the master key, which
kills every old id.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from fido2.cose import ES256, CoseKey, EdDSA

from emulators.fido.state import FidoState

ID_LENGTH = 34
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class CredKind(IntEnum):
    SERVER_SIDE = 0x01
    DISCOVERABLE = 0x02


class IdFlag(IntFlag):
    """The credential id's ``flags`` byte (module docstring)."""

    CRED_PROTECT = 0x03  # bits 0-1: the CredProtect level
    HMAC_SECRET = 0x04
    EDDSA = 0x08


class CredProtect(IntEnum):
    """credProtect levels (CTAP 2.1 §12.1)."""

    UV_OPTIONAL = 1
    UV_OPTIONAL_WITH_CRED_ID_LIST = 2
    UV_REQUIRED = 3


class Alg(IntEnum):
    """COSE algorithms this authenticator creates keys for."""

    ES256 = -7
    EDDSA = -8


SUPPORTED_ALGS = (Alg.ES256, Alg.EDDSA)


@dataclass(frozen=True, slots=True)
class Credential:
    """A credential this authenticator can sign with (metadata only for discoverable ones)."""

    cred_id: bytes
    rp_id_hash: bytes
    alg: Alg
    cred_protect: CredProtect
    hmac_secret: bool
    discoverable: bool
    rp_id: str | None = None
    rp_name: str | None = None
    user: dict[str, Any] | None = None
    large_blob_key: bytes | None = None
    created: int = 0

    def to_json(self) -> dict[str, Any]:
        user = self.user or {}
        return {
            "id": self.cred_id.hex(),
            "rp_id": self.rp_id,
            "rp_name": self.rp_name,
            "user_id": bytes(user.get("id", b"")).hex(),
            "user_name": user.get("name"),
            "display_name": user.get("displayName"),
            "large_blob_key": self.large_blob_key.hex() if self.large_blob_key else None,
            "created": self.created,
        }


def _flags(alg: Alg, cred_protect: CredProtect, hmac_secret: bool) -> IdFlag:
    flags = IdFlag(int(cred_protect)) & IdFlag.CRED_PROTECT
    if hmac_secret:
        flags |= IdFlag.HMAC_SECRET
    if alg == Alg.EDDSA:
        flags |= IdFlag.EDDSA
    return flags


class KeyVault:
    """Derives credential ids and keys from the master key (see module docstring)."""

    def __init__(self, state: FidoState) -> None:
        self.state = state

    def _mac(self, head: bytes, rp_id_hash: bytes) -> bytes:
        return hmac.new(self.state.master_key, b"id" + head + rp_id_hash, hashlib.sha256).digest()[:16]

    def new_id(
        self, rp_id_hash: bytes, kind: CredKind, alg: Alg, cred_protect: CredProtect, hmac_secret: bool
    ) -> bytes:
        head = bytes((kind, _flags(alg, cred_protect, hmac_secret))) + os.urandom(16)
        return head + self._mac(head, rp_id_hash)

    def parse(self, cred_id: bytes, rp_id_hash: bytes) -> Credential | None:
        """The credential behind ``cred_id`` for this RP, or None if it is not one of ours for it."""
        if len(cred_id) != ID_LENGTH or cred_id[0] not in (CredKind.SERVER_SIDE, CredKind.DISCOVERABLE):
            return None
        head, mac = cred_id[:18], cred_id[18:]
        if not hmac.compare_digest(mac, self._mac(head, rp_id_hash)):
            return None
        flags = IdFlag(cred_id[1])
        level = int(flags & IdFlag.CRED_PROTECT)
        if level == 0:
            return None
        return Credential(
            cred_id=bytes(cred_id),
            rp_id_hash=rp_id_hash,
            alg=Alg.EDDSA if flags & IdFlag.EDDSA else Alg.ES256,
            cred_protect=CredProtect(level),
            hmac_secret=bool(flags & IdFlag.HMAC_SECRET),
            discoverable=cred_id[0] == CredKind.DISCOVERABLE,
        )

    def _seed(self, cred: Credential, label: bytes) -> bytes:
        message = label + cred.cred_id + cred.rp_id_hash
        return hmac.new(self.state.master_key, message, hashlib.sha256).digest()

    def private_key(self, cred: Credential) -> ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
        seed = self._seed(cred, b"key")
        if cred.alg == Alg.EDDSA:
            return ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        scalar = int.from_bytes(seed, "big") % (_P256_ORDER - 1) + 1
        return ec.derive_private_key(scalar, ec.SECP256R1())

    def public_key(self, cred: Credential) -> CoseKey:
        key = self.private_key(cred)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return EdDSA.from_cryptography_key(key.public_key())
        return ES256.from_cryptography_key(key.public_key())

    def sign(self, cred: Credential, message: bytes) -> bytes:
        """ECDSA-SHA256 (DER) or Ed25519 signature (WebAuthn §6.5.5 "packed" / assertion signature)."""
        key = self.private_key(cred)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(message)
        from cryptography.hazmat.primitives import hashes

        return key.sign(message, ec.ECDSA(hashes.SHA256()))

    def cred_random(self, cred: Credential, uv: bool) -> bytes:
        """CredRandomWithUV / CredRandomWithoutUV of hmac-secret (CTAP 2.1 §12.5)."""
        return self._seed(cred, b"hmac-uv" if uv else b"hmac")


class CredentialList:
    """The discoverable credentials (metadata in the ``fido_credentials`` section)."""

    MAX = 50

    def __init__(self, state: FidoState, vault: KeyVault) -> None:
        self.state = state
        self.vault = vault
        self._cache: tuple[int, list[Credential]] | None = None

    def _load(self, entry: dict[str, Any]) -> Credential | None:
        rp_id = entry.get("rp_id") or ""
        rp_id_hash = hashlib.sha256(rp_id.encode()).digest()
        base = self.vault.parse(bytes.fromhex(entry["id"]), rp_id_hash)
        if base is None:  # left over from before a reset (other master key)
            return None
        user: dict[str, Any] = {"id": bytes.fromhex(entry.get("user_id") or "")}
        if entry.get("user_name") is not None:
            user["name"] = entry["user_name"]
        if entry.get("display_name") is not None:
            user["displayName"] = entry["display_name"]
        lbk = entry.get("large_blob_key")
        return Credential(
            base.cred_id, rp_id_hash, base.alg, base.cred_protect, base.hmac_secret, True,
            rp_id, entry.get("rp_name"), user, bytes.fromhex(lbk) if lbk else None,
            int(entry.get("created", 0)),
        )

    def all(self) -> list[Credential]:
        """Every stored discoverable credential (parsed once per change of the stored list)."""
        cache = self._cache
        if cache is not None and cache[0] == self.state.generation:
            return list(cache[1])
        generation = self.state.generation
        creds = [c for c in (self._load(e) for e in self.state.credentials()) if c is not None]
        self._cache = (generation, creds)
        return list(creds)

    def for_rp(self, rp_id_hash: bytes) -> list[Credential]:
        """This RP's discoverable credentials, most recent first (CTAP 2.1 §6.2.2 step 7)."""
        creds = [c for c in self.all() if c.rp_id_hash == rp_id_hash]
        return sorted(creds, key=lambda c: c.created, reverse=True)

    def find(self, cred_id: bytes) -> Credential | None:
        for cred in self.all():
            if cred.cred_id == cred_id:
                return cred
        return None

    def remaining(self) -> int:
        return max(0, self.MAX - len(self.all()))

    def store(self, cred: Credential) -> None:
        """Add ``cred``, replacing one for the same RP and user id (CTAP 2.1 §6.1.2 step 17)."""
        user_id = (cred.user or {}).get("id")
        keep = [
            c for c in self.all()
            if not (c.rp_id_hash == cred.rp_id_hash and (c.user or {}).get("id") == user_id)
        ]
        self.state.save_credentials([c.to_json() for c in [*keep, cred]])

    def delete(self, cred_id: bytes) -> bool:
        creds = self.all()
        keep = [c for c in creds if c.cred_id != cred_id]
        if len(keep) == len(creds):
            return False
        self.state.save_credentials([c.to_json() for c in keep])
        return True

    def update_user(self, cred_id: bytes, user: dict[str, Any]) -> bool:
        creds = self.all()
        out = []
        found = False
        for c in creds:
            if c.cred_id == cred_id:
                found = True
                c = Credential(
                    c.cred_id, c.rp_id_hash, c.alg, c.cred_protect, c.hmac_secret, True,
                    c.rp_id, c.rp_name, user, c.large_blob_key, c.created,
                )
            out.append(c)
        if found:
            self.state.save_credentials([c.to_json() for c in out])
        return found
