"""Persistent authenticator state in :class:`emulators.card.store.CardStore` sections.

Sections (all JSON; binary values hex-encoded):

* ``fido`` — ``aaguid``, ``master_key`` (derives every credential key, see :mod:`.credstore`),
  ``pin_salt``, ``pin_hash`` (HMAC of LEFT(SHA-256(PIN), 16), or absent), ``pin_retries``,
  ``counter`` (the signature counter *reservation*, see :meth:`FidoState.next_counter`);
* ``fido_credentials`` — ``creds``: the discoverable credentials' metadata (no private keys);
* ``fido_large_blobs`` — ``array``: the serialized large-blob array (CTAP 2.1 §6.10);
* ``fido_attestation`` — which attestation batch the key belongs to: batch id, directory, root certificate
  (see :mod:`.attestation`; states written before batch attestation held a per-key attestation key here,
  replaced on first use).

Every change is one atomic :meth:`CardStore.commit_many`, so a tear leaves the old or the new state.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from typing import Any

from emulators.card.store import CardStore

logger = logging.getLogger(__name__)

META = "fido"
CREDS = "fido_credentials"
BLOBS = "fido_large_blobs"
ATTESTATION = "fido_attestation"

#: The AAGUID of this authenticator model (getInfo answers it to anyone, before any PIN): one value for every
#: emulated key, as WebAuthn §6.1.1 means it — a per-key AAGUID would identify the key to every host
#: (issue 12; docs/card-profile.md §PIV access rules). A state created before with its own random AAGUID is
#: moved to this one on load (credential ids and keys do not depend on the AAGUID).
MODEL_AAGUID = bytes.fromhex("2ddbe5215cd042eaa89fff70b304fd61")

#: The signature counter is reserved in blocks: a write per block, not per assertion (see next_counter).
COUNTER_BLOCK = 64
#: Serialized empty large-blob array: CBOR [] followed by LEFT(SHA-256([]), 16) (CTAP 2.1 §6.10.2).
EMPTY_BLOB_ARRAY = b"\x80" + hashlib.sha256(b"\x80").digest()[:16]


class FidoState:
    """Typed access to the persistent FIDO state; the only code that writes the FIDO sections."""

    def __init__(self, store: CardStore) -> None:
        self.store = store
        self._lock = threading.RLock()
        meta = store.section(META)
        if "master_key" not in meta:
            meta = self._fresh_meta(meta)
            store.commit(META, meta)
            logger.info("new FIDO authenticator state (AAGUID %s)", meta["aaguid"])
        elif meta.get("aaguid") != MODEL_AAGUID.hex():
            meta = dict(meta, aaguid=MODEL_AAGUID.hex())  # migration: a per-key AAGUID identified the key
            store.commit(META, meta)
            logger.warning("FIDO state moved to the model AAGUID %s", MODEL_AAGUID.hex())
        self._meta = meta
        self._counter = int(meta.get("counter", 0))  # next value handed out
        self._reserved = self._counter  # values below this are covered by the stored reservation
        #: Bumped whenever the stored credential list changes (lets readers cache it).
        self.generation = 0

    @staticmethod
    def _fresh_meta(old: dict[str, Any]) -> dict[str, Any]:
        return {
            "aaguid": MODEL_AAGUID.hex(),
            "master_key": os.urandom(32).hex(),
            "pin_salt": os.urandom(16).hex(),
            "pin_retries": 8,
            "counter": int(old.get("counter", 0)),  # never goes backwards, not even on reset
        }

    # --- identity -----------------------------------------------------------------------------------

    @property
    def aaguid(self) -> bytes:
        return bytes.fromhex(self._meta["aaguid"])

    @property
    def master_key(self) -> bytes:
        return bytes.fromhex(self._meta["master_key"])

    # --- PIN ----------------------------------------------------------------------------------------

    @property
    def pin_set(self) -> bool:
        return bool(self._meta.get("pin_hash"))

    @property
    def pin_retries(self) -> int:
        return int(self._meta.get("pin_retries", 8))

    def _pin_mac(self, pin_hash: bytes) -> str:
        return hmac.new(bytes.fromhex(self._meta["pin_salt"]), pin_hash, hashlib.sha256).hexdigest()

    def pin_matches(self, pin_hash: bytes) -> bool:
        stored = self._meta.get("pin_hash")
        return bool(stored) and hmac.compare_digest(stored, self._pin_mac(pin_hash))

    def set_pin(self, pin_hash: bytes, retries: int) -> None:
        self._update_meta(pin_hash=self._pin_mac(pin_hash), pin_retries=retries)

    def set_pin_retries(self, retries: int) -> None:
        if retries != self.pin_retries:
            self._update_meta(pin_retries=retries)

    def _update_meta(self, **changes: Any) -> None:
        with self._lock:
            meta = dict(self._meta, **changes)
            self.store.commit(META, meta)
            self._meta = meta

    # --- signature counter ----------------------------------------------------------------------------

    def next_counter(self) -> int:
        """The next signature counter value (WebAuthn §6.1.1), strictly increasing across power loss.

        The stored ``counter`` is a reservation: values below it may have been used. When the in-memory
        counter reaches it, a block of :data:`COUNTER_BLOCK` is reserved with one atomic write *before*
        any value of it is used, so after a tear the counter restarts above everything handed out.
        """
        with self._lock:
            if self._counter >= self._reserved:
                reserved = self._counter + COUNTER_BLOCK
                self._update_meta(counter=reserved)
                self._reserved = reserved
            self._counter += 1
            return self._counter

    @property
    def counter(self) -> int:
        """The last counter value handed out in this session (or the stored reservation)."""
        return self._counter

    # --- credentials and blobs ------------------------------------------------------------------------

    def credentials(self) -> list[dict[str, Any]]:
        return list(self.store.section(CREDS).get("creds", []))

    def save_credentials(self, creds: list[dict[str, Any]]) -> None:
        try:
            self.store.commit(CREDS, {"creds": creds})
        finally:
            self.generation += 1

    def large_blob_array(self) -> bytes:
        raw = self.store.section(BLOBS).get("array")
        return bytes.fromhex(raw) if raw else EMPTY_BLOB_ARRAY

    def save_large_blob_array(self, data: bytes) -> None:
        self.store.commit(BLOBS, {"array": data.hex()})

    # --- reset --------------------------------------------------------------------------------------

    def wipe(self) -> None:
        """authenticatorReset (CTAP 2.1 §6.6): new master key (old credential ids die), no PIN, no
        discoverable credentials, empty large-blob array — one atomic write. AAGUID, attestation and the
        counter survive (the counter must never go backwards)."""
        with self._lock:
            meta = self._fresh_meta({"aaguid": self._meta["aaguid"], "counter": self._reserved})
            try:
                self.store.commit_many({META: meta, CREDS: {"creds": []}, BLOBS: {}})
            finally:
                self.generation += 1
            self._meta = meta
