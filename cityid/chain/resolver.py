"""did:ethr resolver producing the same DID document as the standard ethr-did-resolver (DID Core JSON-LD).

The document rules follow ethr-did-resolver's ``wrapDidDocument`` (did:ethr method spec): the history of
ERC-1056 events of an identity is replayed in order; ``did/pub/<alg>/<purpose>/<enc>`` attributes become
verification methods (P-256 keys as ``did/pub/Multikey/{sigAuth,veriKey}/hex`` → type ``Multikey`` with
``publicKeyHex``), ``did/svc/<type>`` attributes become services, delegates become
``EcdsaSecp256k1RecoveryMethod2020`` entries, and a change of owner to the zero address deactivates the DID.
An entry is active while ``validTo >= now`` (wall clock, like the standard resolver).

Unlike the standard resolver (one ``eth_getLogs`` per changed block, walking ``previousChange``), the history
is fetched with one ``eth_getLogs`` filtered on the identity topic.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eth_keys.datatypes import PublicKey
from eth_utils.crypto import keccak

from cityid.chain.contracts import DecodedEvent, Events
from cityid.chain.errors import ChainError
from cityid.chain.network import NetworkConfig, checksum
from cityid.chain.rpc import RpcClient, as_dict, as_int, as_list

NULL_ADDRESS = "0x0000000000000000000000000000000000000000"
CONTEXT = [
    "https://www.w3.org/ns/did/v1",
    "https://w3id.org/security/suites/secp256k1recovery-2020/v2",
    "https://w3id.org/security/v3-unstable",
]
_IDENTIFIER = re.compile(r"^(.*)?(0x[0-9a-fA-F]{40}|0x[0-9a-fA-F]{66})$")
_ATTR = re.compile(r"^did/(pub|svc)/(\w+)(/(\w+))?(/(\w+))?$")
_LEGACY_ATTR_TYPES = {
    "sigAuth": "SignatureAuthentication2018",
    "veriKey": "VerificationKey2018",
    "enc": "KeyAgreementKey2019",
}
_LEGACY_ALGO = {
    "Secp256k1VerificationKey2018": "EcdsaSecp256k1VerificationKey2019",
    "Ed25519SignatureAuthentication2018": "Ed25519VerificationKey2018",
    "Secp256k1SignatureAuthentication2018": "EcdsaSecp256k1VerificationKey2019",
    "RSAVerificationKey2018": "RSAVerificationKey2018",
    "Ed25519VerificationKey2018": "Ed25519VerificationKey2018",
    "X25519KeyAgreementKey2019": "X25519KeyAgreementKey2019",
}
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


class InvalidDidError(ChainError, ValueError):
    """Not a did:ethr DID this network can resolve."""


@dataclass(frozen=True, slots=True)
class ParsedDid:
    """``did:ethr:<network>:<address or compressed public key>``."""

    network: str  # as written: a name or 0x-hex chain id ("mainnet" when omitted)
    address: str  # checksummed identity address
    public_key: str | None  # 0x-hex compressed secp256k1 key when the DID is key-based


def parse_did(did: str) -> ParsedDid:
    """Split a did:ethr DID (ethr-did-resolver rules); raise :class:`InvalidDidError`."""
    if not isinstance(did, str) or not did.startswith("did:ethr:"):
        raise InvalidDidError(f"not a did:ethr DID: {str(did)[:80]!r}")
    body = did[len("did:ethr:") :].split("?")[0].split("#")[0]
    m = _IDENTIFIER.match(body)
    if not m:
        raise InvalidDidError(f"not a valid did:ethr: {did[:80]!r}")
    network = m[1][:-1] if m[1] else "mainnet"
    ident = m[2]
    if len(ident) > 42:
        try:
            pub = PublicKey.from_compressed_bytes(bytes.fromhex(ident[2:]))
        except Exception as exc:  # eth_keys raises several types for bad points
            raise InvalidDidError(f"bad public key in {did[:80]!r}") from exc
        return ParsedDid(network, pub.to_checksum_address(), ident)
    return ParsedDid(network, checksum(ident), None)


def did_for(network: NetworkConfig, address: str) -> str:
    """The DID string of an identity address on ``network`` (by network name)."""
    return f"did:ethr:{network.name}:{checksum(address)}"


def address_of(network: NetworkConfig, did: str) -> str:
    """Identity address of a DID that must belong to ``network`` (name or 0x-hex chain id)."""
    parsed = parse_did(did)
    if parsed.network not in (network.name, hex(network.chain_id)):
        raise InvalidDidError(f"{did[:80]} is not on network {network.name} ({hex(network.chain_id)})")
    return parsed.address


# ---- events -> document -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DidEvent:
    """One ERC-1056 event, normalised the way ethr-did-resolver's log parser presents it."""

    kind: str  # DIDOwnerChanged | DIDDelegateChanged | DIDAttributeChanged
    block_number: int
    log_index: int
    owner: str = ""
    type_or_name: str = ""  # delegateType / attribute name (bytes32 as UTF-8, trailing NULs stripped)
    delegate_or_value: str = ""  # delegate address (checksummed) / 0x-hex value
    valid_to: int = 0
    previous_change: int = 0

    def to_json(self) -> str:
        return json.dumps(
            [
                self.kind,
                self.block_number,
                self.log_index,
                self.owner,
                self.type_or_name,
                self.delegate_or_value,
                self.valid_to,
                self.previous_change,
            ]
        )

    @classmethod
    def from_json(cls, text: str) -> DidEvent:
        k, b, i, o, t, v, vt, pc = json.loads(text)
        return cls(k, b, i, o, t, v, vt, pc)


def _bytes32_text(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8").rstrip("\0")
    except UnicodeDecodeError:
        return None


def did_event(ev: DecodedEvent) -> DidEvent | None:
    """Normalise a decoded registry log; None for non-ERC-1056 events or non-UTF-8 names (skipped)."""
    a = ev.args
    if ev.name == "DIDOwnerChanged":
        return DidEvent(
            ev.name,
            ev.block_number,
            ev.log_index,
            owner=checksum(a["owner"]),
            previous_change=int(a["previousChange"]),
        )
    if ev.name == "DIDDelegateChanged":
        t = _bytes32_text(a["delegateType"])
        if t is None:
            return None
        return DidEvent(
            ev.name,
            ev.block_number,
            ev.log_index,
            type_or_name=t,
            delegate_or_value=checksum(a["delegate"]),
            valid_to=int(a["validTo"]),
            previous_change=int(a["previousChange"]),
        )
    if ev.name == "DIDAttributeChanged":
        t = _bytes32_text(a["name"])
        if t is None:
            return None
        return DidEvent(
            ev.name,
            ev.block_number,
            ev.log_index,
            type_or_name=t,
            delegate_or_value="0x" + bytes(a["value"]).hex(),
            valid_to=int(a["validTo"]),
            previous_change=int(a["previousChange"]),
        )
    return None


def _b58(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


@dataclass(frozen=True, slots=True)
class BuiltDocument:
    document: dict[str, Any]
    deactivated: bool
    version_id: int


def build_document(
    did: str,
    address: str,
    history: Iterable[DidEvent],
    chain_id: int,
    now: int,
    controller_key: str | None = None,
) -> BuiltDocument:
    """Replay ``history`` (chronological) into a DID document, as ethr-did-resolver does."""
    controller = address
    version_id = 0
    deactivated = False
    delegate_count = 0
    service_count = 0
    auth: dict[str, str] = {}
    key_agreement: dict[str, str] = {}
    signing: dict[str, str] = {}
    pks: dict[str, dict[str, Any]] = {}
    services: dict[str, dict[str, Any]] = {}
    for ev in history:
        version_id = max(version_id, ev.block_number)
        index = f"{ev.kind}-{ev.type_or_name}-{ev.delegate_or_value or ev.owner}"
        if ev.kind == "DIDOwnerChanged":
            index = f"{ev.kind}-undefined-undefined"
        if ev.kind != "DIDOwnerChanged" and ev.valid_to and ev.valid_to >= now:
            if ev.kind == "DIDDelegateChanged":
                delegate_count += 1
                if ev.type_or_name in ("sigAuth", "veriKey"):
                    ref = f"{did}#delegate-{delegate_count}"
                    if ev.type_or_name == "sigAuth":
                        auth[index] = ref
                    pks[index] = {
                        "id": ref,
                        "type": "EcdsaSecp256k1RecoveryMethod2020",
                        "controller": did,
                        "blockchainAccountId": f"eip155:{chain_id}:{ev.delegate_or_value}",
                    }
                    signing[index] = ref
            else:
                m = _ATTR.match(ev.type_or_name)
                if m:
                    section, algorithm, purpose, encoding = m[1], m[2], m[4], m[6]
                    value = bytes.fromhex(ev.delegate_or_value[2:])
                    if section == "pub":
                        delegate_count += 1
                        ref = f"{did}#delegate-{delegate_count}"
                        suffix = _LEGACY_ATTR_TYPES.get(purpose, purpose) if purpose else "undefined"
                        vtype = f"{algorithm}{suffix}"
                        pk: dict[str, Any] = {
                            "id": ref,
                            "type": _LEGACY_ALGO.get(vtype, algorithm),
                            "controller": did,
                        }
                        ok = True
                        if encoding in (None, "hex"):
                            pk["publicKeyHex"] = value.hex()
                        elif encoding == "base64":
                            pk["publicKeyBase64"] = base64.b64encode(value).decode()
                        elif encoding == "base58":
                            pk["publicKeyBase58"] = _b58(value)
                        elif encoding == "pem":
                            try:
                                pk["publicKeyPem"] = value.decode("utf-8")
                            except UnicodeDecodeError:
                                ok = False
                        else:
                            pk["value"] = value.hex()
                        if ok:
                            pks[index] = pk
                            if purpose == "sigAuth":
                                auth[index] = ref
                                signing[index] = ref
                            elif purpose == "enc":
                                key_agreement[index] = ref
                            else:
                                signing[index] = ref
                    else:
                        service_count += 1
                        try:
                            text = value.decode("utf-8")
                        except UnicodeDecodeError:
                            text = None
                        if text is not None:
                            try:
                                endpoint: Any = json.loads(text)
                            except ValueError:
                                endpoint = text
                            services[index] = {
                                "id": f"{did}#service-{service_count}",
                                "type": algorithm,
                                "serviceEndpoint": endpoint,
                            }
        elif ev.kind == "DIDOwnerChanged":
            controller = ev.owner
            if ev.owner == NULL_ADDRESS:
                deactivated = True
                break
        else:
            if ev.kind == "DIDDelegateChanged" or ev.type_or_name.startswith("did/pub/"):
                delegate_count += 1
            elif ev.type_or_name.startswith("did/svc/"):
                service_count += 1
            for table in (auth, signing, pks, services):
                table.pop(index, None)

    base: dict[str, Any] = {"id": did, "verificationMethod": [], "authentication": [], "assertionMethod": []}
    if deactivated:
        return BuiltDocument(base, True, version_id)
    methods: list[dict[str, Any]] = [
        {
            "id": f"{did}#controller",
            "type": "EcdsaSecp256k1RecoveryMethod2020",
            "controller": did,
            "blockchainAccountId": f"eip155:{chain_id}:{controller}",
        }
    ]
    authentication = [f"{did}#controller"]
    assertion = [f"{did}#controller"]
    if controller_key and controller == address:
        methods.append(
            {
                "id": f"{did}#controllerKey",
                "type": "EcdsaSecp256k1VerificationKey2019",
                "controller": did,
                "publicKeyHex": controller_key.removeprefix("0x"),
            }
        )
        authentication.append(f"{did}#controllerKey")
        assertion.append(f"{did}#controllerKey")
    doc: dict[str, Any] = {
        "id": did,
        "verificationMethod": methods + list(pks.values()),
        "authentication": authentication + list(auth.values()),
        "assertionMethod": assertion + list(signing.values()),
    }
    if services:
        doc["service"] = list(services.values())
    if key_agreement:
        doc["keyAgreement"] = list(key_agreement.values())
    return BuiltDocument(doc, False, version_id)


def p256_keys(document: dict[str, Any]) -> tuple[bytes, ...]:
    """Active uncompressed P-256 points (65 bytes) published as ``did/pub/Multikey/*/hex`` attributes."""
    out = []
    for vm in document.get("verificationMethod", []):
        hexkey = vm.get("publicKeyHex")
        if (
            vm.get("type") == "Multikey"
            and isinstance(hexkey, str)
            and len(hexkey) == 130
            and hexkey[:2] == "04"
        ):
            out.append(bytes.fromhex(hexkey))
    return tuple(out)


def history_from_logs(logs: Sequence[Any], identity: str) -> list[DidEvent]:
    """Decode and order (block, log index) the registry logs of one identity."""
    abi = Events.of("CityDIDRegistry")
    topic = "0x" + bytes(12).hex() + identity[2:].lower()
    events = []
    for log in as_list(logs, "eth_getLogs result"):
        log = as_dict(log, "log")
        topics = as_list(log.get("topics"), "log topics")
        if len(topics) < 2 or str(topics[1]).lower() != topic:
            continue
        decoded = abi.decode(log)
        ev = did_event(decoded) if decoded else None
        if ev is not None:
            events.append(ev)
    return sorted(events, key=lambda e: (e.block_number, e.log_index))


def did_logs_filter(network: NetworkConfig, identities: Sequence[str]) -> dict[str, Any]:
    """``eth_getLogs`` filter for every ERC-1056 event of some identities since the registry deployment."""
    abi = Events.of("CityDIDRegistry")
    topics0 = [
        ("0x" + abi.topics[n].hex())
        for n in ("DIDOwnerChanged", "DIDDelegateChanged", "DIDAttributeChanged")
    ]
    idents = ["0x" + bytes(12).hex() + i[2:].lower() for i in identities]
    return {
        "address": network.address("did_registry"),
        "fromBlock": hex(network.deploy_block),
        "toBlock": "latest",
        "topics": [topics0, idents],
    }


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class DIDResolver:
    """Resolve ``did:ethr:<network>:<address>`` against our registry through JSON-RPC."""

    def __init__(self, client: RpcClient, network: NetworkConfig) -> None:
        self.client = client
        self.network = network

    def history(self, address: str) -> list[DidEvent]:
        logs = self.client.request("eth_getLogs", [did_logs_filter(self.network, [address])])
        return history_from_logs(logs, address)

    def resolve(
        self, did: str, accept: str = "application/did+ld+json", now: int | None = None
    ) -> dict[str, Any]:
        """A DID resolution result (DID Core §7.1): document, document metadata, resolution metadata."""
        try:
            parsed = parse_did(did)
        except InvalidDidError as exc:
            return {
                "didResolutionMetadata": {"error": "invalidDid", "message": str(exc)},
                "didDocumentMetadata": {},
                "didDocument": None,
            }
        if parsed.network not in (self.network.name, hex(self.network.chain_id)):
            return {
                "didResolutionMetadata": {
                    "error": "unknownNetwork",
                    "message": f"no configuration for network: {parsed.network}",
                },
                "didDocumentMetadata": {},
                "didDocument": None,
            }
        history = self.history(parsed.address)
        built = build_document(
            did,
            parsed.address,
            history,
            self.network.chain_id,
            int(time.time()) if now is None else now,
            parsed.public_key,
        )
        meta: dict[str, Any] = {"deactivated": True} if built.deactivated else {}
        if built.version_id:
            block = as_dict(
                self.client.request("eth_getBlockByNumber", [hex(built.version_id), False]), "block"
            )
            meta["versionId"] = str(built.version_id)
            meta["updated"] = _iso(as_int(block.get("timestamp"), "block timestamp"))
        doc = dict(built.document)
        if accept == "application/did+ld+json":
            doc["@context"] = list(CONTEXT)
        return {
            "didDocumentMetadata": meta,
            "didResolutionMetadata": {"contentType": accept},
            "didDocument": doc,
        }

    def document(self, did: str, now: int | None = None) -> dict[str, Any]:
        result = self.resolve(did, now=now)
        if result["didDocument"] is None:
            raise InvalidDidError(result["didResolutionMetadata"]["message"])
        return result["didDocument"]


def identity_from_public_hash(public_hash: bytes, domain: str = "busan-citizen-id/v1") -> str:
    """A citizen identity address derived from a public hash: nobody holds its private key (docs/chain.md)."""
    return checksum("0x" + keccak(domain.encode() + b"\0" + public_hash)[12:].hex())
