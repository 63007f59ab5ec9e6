"""The issuer on chain (docs/chain.md §Roles): ``serve`` only reads it; the root's publish ceremony is
explicit, reads first and is idempotent; a revoked accreditation survives restarts and is final."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cityid.chain.rpc import as_int
from cityid.credential import VCT
from server.app import create_app
from server.chain.gateway import RegistrarGateway
from server.chain.issuer import AccreditationRevokedError, ensure_status_list, publish_issuer
from server.chain.registrar import Registrar
from server.config import ServerConfig
from server.db import Database
from server.keys import KeystoreSigner


def _tx_count(env) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    client = env.client()
    block = as_int(client.request("eth_blockNumber"), "block")
    nonces = [
        as_int(client.request("eth_getTransactionCount", [a.address, "latest"]), "n")
        for a in env.accounts[:3]
    ]
    return (block, *nonces)


@pytest.fixture
def world(embedded_chain, tmp_path):  # type: ignore[no-untyped-def]
    env = embedded_chain
    root = Registrar(env.network, env.client(), env.accounts[0])
    hot = Registrar(env.network, env.client(), env.accounts[0])
    ensure_status_list(hot, 1)
    signer = KeystoreSigner(ec.generate_private_key(ec.SECP256R1()))
    db_url = f"sqlite:///{tmp_path}/s.db"
    Database.from_url(db_url).init()  # `city-server db init`, once

    def start():  # type: ignore[no-untyped-def]
        """One `serve` start-up on the same chain and database (a restart)."""
        gateway = RegistrarGateway(Registrar(env.network, env.client(), hot.sender.account), root.did)
        gateway.check_status_list(1)
        return create_app(
            ServerConfig(database_url=db_url), chain=gateway, signer=signer, db=Database.from_url(db_url)
        )

    return env, root, signer, start


def test_serve_sends_no_transaction_and_does_not_publish(world):  # type: ignore[no-untyped-def]
    env, root, _signer, start = world
    before = _tx_count(env)
    app = start()
    start()
    assert _tx_count(env) == before
    health = app.test_client().get("/health").get_json()
    assert health["issuer_did"] == root.did and health["issuer_ready"] is False
    assert not root.issuers.is_trusted(root.address, VCT)


def test_publish_is_idempotent(world):  # type: ignore[no-untyped-def]
    env, root, signer, start = world
    first = publish_issuer(root, signer.public_point, VCT)
    assert first.sent == ("publish issuer key", "accredit issuer")
    assert not first.state_before.ready
    before = _tx_count(env)
    again = publish_issuer(root, signer.public_point, VCT)
    assert again.sent == () and again.state_before.ready
    assert _tx_count(env) == before
    assert start().test_client().get("/health").get_json()["issuer_ready"] is True


def test_de_accreditation_survives_restarts_and_is_final(world):  # type: ignore[no-untyped-def]
    env, root, signer, start = world
    publish_issuer(root, signer.public_point, VCT)
    start()
    root.revoke_accreditation(root.did, VCT)
    before = _tx_count(env)
    for _ in range(2):
        app = start()
        assert app.test_client().get("/health").get_json()["issuer_ready"] is False
    assert _tx_count(env) == before
    assert not root.issuers.is_trusted(root.address, VCT)
    with pytest.raises(AccreditationRevokedError, match="final"):
        publish_issuer(root, signer.public_point, VCT)
    assert _tx_count(env) == before


def test_issuance_stops_when_the_root_de_accredits_while_serving(world, monkeypatch):  # type: ignore[no-untyped-def]
    from server.service import issuer as readiness
    from server.service.issuer import IssuerNotReadyError
    from tests.unit.server_support import CLAIMS

    env, root, signer, start = world
    publish_issuer(root, signer.public_point, VCT)
    service = start().extensions["cityid.service"]
    root.revoke_accreditation(root.did, VCT)
    before = _tx_count(env)
    monkeypatch.setattr(readiness, "RECHECK_SECONDS", 0.0)
    with pytest.raises(IssuerNotReadyError, match="de-accredited"):
        service.enroll("counter-1", "after-revoke-0001", CLAIMS, signer.public_point, b"\x01" * 8)
    assert _tx_count(env) == before  # refused before any chain write
