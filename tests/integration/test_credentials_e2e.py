"""Kiosk verification end to end: the emulated citizen card in pcscd's vpcd reader, the chain (embedded
py-evm and a real anvil node) read through LiveChainView and the kiosk SyncCache; reference sd-jwt check."""

from __future__ import annotations

import json

import pytest
from jwcrypto.jwk import JWK
from sd_jwt.verifier import SDJWTVerifier

from cityid import jose
from cityid.chain.live import LiveChainView
from cityid.chain.sync import SyncCache
from cityid.chain.view import CredentialStatus
from cityid.keys import P256PublicKey
from terminal.flows.kiosk import KioskVerification, service
from terminal.pcsc.connection import open_connection
from terminal.sessions.citizen import CitizenSession
from terminal.verifier import CheckName, NonceStore, Verifier
from tests.credkit import AUDIENCE, PIN, ChainIssuer, holder_point

pytestmark = pytest.mark.integration


def _tap(reader: str, verifier: Verifier, service_id: str = "benefit-check"):
    with open_connection(reader) as conn:
        flow = KioskVerification(verifier, service(service_id))
        verdict = flow.run_card(CitizenSession(conn), PIN)
        claims = dict(verdict.claims)
        flow.end()
        assert flow.claims == {}
    return verdict, claims


def test_card_to_verdict_through_pcscd_and_chain(virtual_card, chain_env, tmp_path) -> None:
    city = ChainIssuer.setup(chain_env.network, chain_env.client(), chain_env.accounts[0])
    with open_connection(virtual_card.reader_name) as conn:
        cred, identity = city.personalize(conn)
    live = Verifier(LiveChainView(chain_env.client(), chain_env.network), AUDIENCE, NonceStore())

    verdict, claims = _tap(virtual_card.reader_name, live)
    assert verdict.ok, verdict
    assert claims == {"busan_resident": True, "age_over_65": True}
    verdict, claims = _tap(virtual_card.reader_name, live, "residence")
    assert verdict.ok and set(claims) == {"family_name", "given_name", "district", "busan_resident"}

    # the reference implementation verifies what the card presented through pcscd
    with open_connection(virtual_card.reader_name) as conn:
        session = CitizenSession(conn)
        session.verify_pin(PIN)
        p = session.present(["given_name"], "reference-nonce-42", AUDIENCE, 1_900_000_000)
    issuer_jwk = JWK.from_json(
        json.dumps(jose.jwk_from_point(P256PublicKey.from_crypto(city.issuer_key.public_key()).point))
    )
    out = SDJWTVerifier(p, lambda iss, hdr: issuer_jwk, AUDIENCE, "reference-nonce-42").get_verified_payload()
    assert out["given_name"] == "민수" and "family_name" not in out

    # kiosk sync cache: warm → same verdict with 0 round trips; stale → fail closed
    cache = SyncCache(chain_env.client(), chain_env.network, tmp_path / "sync.db", confirmations=0)
    cache.sync()
    cached = Verifier(cache, AUDIENCE, NonceStore())
    assert _tap(virtual_card.reader_name, cached)[0].ok
    stale = SyncCache(chain_env.client(), chain_env.network, tmp_path / "never.db", confirmations=0)
    verdict, _ = _tap(virtual_card.reader_name, Verifier(stale, AUDIENCE, NonceStore()))
    assert verdict.failed == CheckName.CHAIN

    # suspension and revocation on chain
    index = jose.decode_json_segment(cred.issuer_jwt.split(".")[1])["status"]["status_list"]["idx"]
    city.registrar.set_status(city.list_id, [index], CredentialStatus.SUSPENDED)
    verdict, claims = _tap(virtual_card.reader_name, live)
    assert (verdict.failed, verdict.reason, claims) == (CheckName.STATUS, "verdict.reason.suspended", {})
    city.registrar.set_status(city.list_id, [index], CredentialStatus.VALID)
    assert _tap(virtual_card.reader_name, live)[0].ok

    # the card is reported lost: its key is revoked on the citizen's DID
    city.registrar.revoke_key(identity, holder_point(cred))
    verdict, _ = _tap(virtual_card.reader_name, live)
    assert verdict.failed == CheckName.HOLDER_KEY
    city.registrar.revoke(city.list_id, [index])
    verdict, _ = _tap(virtual_card.reader_name, live)
    assert verdict.failed == CheckName.STATUS and verdict.reason == "verdict.reason.revoked"
