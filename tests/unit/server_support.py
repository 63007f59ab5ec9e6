"""Test support for the server unit tests: an in-memory chain gateway (records every chain write)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cityid.chain.view import ChainError, CredentialStatus


@dataclass
class MemoryChain:
    """A :class:`server.chain.gateway.ChainGateway` in memory; ``fail_next`` makes the next write raise."""

    chain_id: int = 31337
    status_registry: str = "0x" + "11" * 20
    keys: dict[str, set[bytes]] = field(default_factory=dict)
    revoked_keys: dict[str, set[bytes]] = field(default_factory=dict)
    status: dict[tuple[int, int], CredentialStatus] = field(default_factory=dict)
    calls: list[tuple[str, int]] = field(default_factory=list)
    issuers: dict[str, bytes] = field(default_factory=dict)
    fail_next: int = 0
    _counter: int = 0

    def _write(self, what: str, n: int) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ChainError(f"injected failure in {what}")
        self.calls.append((what, n))

    def new_citizen_identity(self) -> str:
        self._counter += 1
        return "0x" + f"{self._counter:040x}"

    def did_for(self, identity: str) -> str:
        return f"did:ethr:{hex(self.chain_id)}:{identity}"

    def register_keys(self, entries: Sequence[tuple[str, bytes]]) -> None:
        self._write("register_keys", len(entries))
        for identity, point in entries:
            self.keys.setdefault(identity, set()).add(point)

    def revoke_keys(self, entries: Sequence[tuple[str, bytes]]) -> None:
        self._write("revoke_keys", len(entries))
        for identity, point in entries:
            self.keys.get(identity, set()).discard(point)
            self.revoked_keys.setdefault(identity, set()).add(point)

    def create_status_list(self) -> int:
        """``Registrar.create_status_list`` in memory: a new list id (the citizen list is 1)."""
        self._write("create_status_list", 1)
        self._lists = getattr(self, "_lists", 1) + 1
        return self._lists

    def set_status(self, list_id: int, indexes: Sequence[int], status: CredentialStatus) -> None:
        self._write("set_status", len(indexes))
        for i in indexes:
            self.status[(list_id, i)] = status

    @property
    def issuer_did(self) -> str:
        return self.did_for("0x" + "22" * 20)

    def publish_issuer(self, issuer_point: bytes, vct: str) -> str:
        """The root's ceremony (``city-server issuer publish``), in memory; the service never calls it."""
        self.issuers[self.issuer_did] = issuer_point
        return self.issuer_did

    def issuer_state(self, issuer_point: bytes, vct: str):  # type: ignore[no-untyped-def]
        from server.chain.issuer import IssuerState

        published = self.issuers.get(self.issuer_did) == issuer_point
        until = 2**40 if published else 0
        return IssuerState(self.issuer_did, published, 0, until, False, 1)


class FlaskTransport:
    """Lets :class:`terminal.server_client.ServerClient` talk to a Flask app's test client (no sockets)."""

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self.client = app.test_client()
        self.sent: list[dict] = []

    def request(self, method, url, data=b"", headers=None, timeout=None):  # type: ignore[no-untyped-def]
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.sent.append({"method": method, "path": path, "data": data, "headers": dict(headers or {})})
        resp = self.client.open(path, method=method, data=data, headers=headers)
        return _Resp(resp)

    def replay(self, i: int = -1):  # type: ignore[no-untyped-def]
        """Send a previously sent request again, byte for byte."""
        r = self.sent[i]
        return self.client.open(r["path"], method=r["method"], data=r["data"], headers=r["headers"])


class _Resp:
    def __init__(self, resp) -> None:  # type: ignore[no-untyped-def]
        self.status_code = resp.status_code
        self._resp = resp

    def json(self):  # type: ignore[no-untyped-def]
        data = self._resp.get_json(silent=True)
        if data is None:
            raise ValueError("not JSON")
        return data


class Card:
    """A citizen's card (or FIDO key) in a test: a P-256 key that can prove the citizen's presence."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        from cityid.keys import P256PublicKey

        self.key = ec.generate_private_key(ec.SECP256R1())
        self.point = P256PublicKey.from_crypto(self.key.public_key()).point

    def sign_raw(self, message: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        from cityid.keys import es256_der_to_raw

        return es256_der_to_raw(self.key.sign(message, ec.ECDSA(hashes.SHA256())))

    def presence(self, terminal: str, did: str, action: str, now: float | None = None) -> dict:
        from terminal.server_client import presence_proof

        return presence_proof(self.sign_raw, self.point, terminal, did, action, now)


#: The management master key of the test servers (software; docs/card-profile.md "Per-card management key").
TEST_MASTER_KEY = bytes(range(32))

CLAIMS = {
    "family_name": "Kim",
    "given_name": "Minji",
    "birthdate": "1950-03-14",
    "district": "Haeundae-gu",
    "busan_resident": True,
    "card_number": "BS-2026-000123",
}


@dataclass
class ServerRig:
    """An app on a database with a MemoryChain, a registered terminal and a client for it."""

    app: object
    chain: object  # MemoryChain or server.chain.gateway.RegistrarGateway
    client: object
    transport: FlaskTransport
    signer: object
    terminal_key: object
    db: object

    @property
    def service(self):  # type: ignore[no-untyped-def]
        return self.app.extensions["cityid.service"]  # type: ignore[attr-defined]


def make_rig(db_url: str, signer=None, chain=None, publish: bool = True, office: str = "main",  # type: ignore[no-untyped-def]
             role: str = "counter", app_kwargs=None, **config) -> ServerRig:  # fmt: skip
    """``publish``: run the root's issuer ceremony first (as ``city-server issuer publish`` would)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from cityid.credential import LocalSigner
    from cityid.keys import P256PublicKey
    from server.app import create_app
    from server.config import ManagementKeyConfig, ServerConfig
    from server.db import Database
    from terminal.server_client import ServerClient

    if signer is None:
        key = ec.generate_private_key(ec.SECP256R1())
        signer = LocalSigner(key)
        signer.public_point = P256PublicKey.from_crypto(key.public_key()).point  # type: ignore[attr-defined]
    db = Database.from_url(db_url)
    chain = chain if chain is not None else MemoryChain()
    if publish:
        publish_for_tests(chain, signer.public_point)
    # per-card management keys (issue 12 item 2): a software master key, as the demo (tests only)
    config.setdefault(
        "management_key", ManagementKeyConfig("software", software_master_key=TEST_MASTER_KEY.hex())
    )
    # Requests wait for their chain writes (run in the request's thread: no writer thread), so the tests
    # can look at the chain right after an answer (docs/server.md §Chain outbox).
    config.setdefault("chain_wait_ms", 5000)
    server_config = ServerConfig(database_url=db_url, **config)
    db.init(server_config.status_list_id, server_config.status_list_capacity)  # `city-server db init`
    app = create_app(server_config, chain=chain, signer=signer, db=db, start_writer=False,
                     **(app_kwargs or {}))  # fmt: skip
    tkey = ec.generate_private_key(ec.SECP256R1())
    pem = (
        tkey.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    db.add_terminal("counter-1", pem, office=office, role=role)
    transport = FlaskTransport(app)
    client = ServerClient("http://city.test", "counter-1", tkey, session=transport, clerk="clerk-a")
    return ServerRig(app, chain, client, transport, signer, tkey, db)


def memory_chain_view(chain: MemoryChain):  # type: ignore[no-untyped-def]
    """A ChainView reading the MemoryChain (what a kiosk would see on that chain)."""
    import time

    from cityid.chain.view import VerificationFacts

    class _View:
        def verification_facts(self, issuer_did, holder_did, vct, status):  # type: ignore[no-untyped-def]
            identity = holder_did.rsplit(":", 1)[1]
            return VerificationFacts(
                issuer_keys=(chain.issuers[issuer_did],) if issuer_did in chain.issuers else (),
                issuer_trusted=issuer_did in chain.issuers,
                holder_keys=tuple(chain.keys.get(identity, ())),
                status=chain.status.get((status.list_id, status.index), CredentialStatus.VALID),
                block_number=len(chain.calls),
                synced_at=time.time(),
            )

    return _View()


def registrar_gateway(network, client, account, list_id: int = 1, root=None):  # type: ignore[no-untyped-def]
    """A real chain gateway (embedded or anvil) with its status list created; ``root`` (default ``account``)
    is the city root account that :func:`publish_for_tests` uses."""
    from server.chain.gateway import RegistrarGateway
    from server.chain.issuer import ensure_status_list
    from server.chain.registrar import Registrar

    registrar = Registrar(network, client, account)
    root_registrar = Registrar(network, client, root) if root is not None else registrar
    ensure_status_list(registrar, list_id)
    gateway = RegistrarGateway(registrar, root_registrar.did)
    gateway.test_root = root_registrar  # type: ignore[attr-defined]
    return gateway


def publish_for_tests(chain, point: bytes) -> None:  # type: ignore[no-untyped-def]
    """The root's ceremony on a MemoryChain or a :func:`registrar_gateway` chain."""
    from cityid.credential import VCT

    if isinstance(chain, MemoryChain):
        chain.publish_issuer(point, VCT)
        return
    from server.chain.issuer import publish_issuer

    publish_issuer(chain.test_root, point, VCT, chain.issuer_did)


def authorization_rig(db_url: str):  # type: ignore[no-untyped-def]
    """A rig whose server holds a local authorization key (a default deployment: it signs terminal
    certificates) and reads credential status from its :class:`MemoryChain`."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from cityid.credential import LocalSigner
    from cityid.keys import P256PublicKey

    auth_key = ec.generate_private_key(ec.SECP256R1())
    signer = LocalSigner(auth_key)
    signer.public_point = P256PublicKey.from_crypto(auth_key.public_key()).point  # type: ignore[attr-defined]
    chain = MemoryChain()
    kwargs = {"authorization_signer": signer, "status_view": memory_chain_view(chain)}
    return make_rig(db_url, chain=chain, app_kwargs=kwargs)


def terminal_key_file(path, db=None, terminal_id: str = "", app=None, claims: Sequence[str] = ()):  # type: ignore[no-untyped-def]
    """A terminal's P-256 key written to ``path`` (PKCS#8 PEM, 0600, as ``kiosk doctor`` wants it); with
    ``db`` registered as ``terminal_id``, and with ``app`` and ``claims`` authorized for those claims.
    Returns the private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))  # fmt: skip
    path.chmod(0o600)
    if db is not None:
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        db.add_terminal(terminal_id, key.public_key().public_bytes(serialization.Encoding.PEM, spki).decode())
    if app is not None and claims:
        app.extensions["cityid.terminals"].authorize(terminal_id, tuple(claims))
    return key
