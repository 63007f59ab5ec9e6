"""`kiosk serve`'s production wiring on a real node: the kiosk built from a TOML config with a network file
(anvil over HTTP JSON-RPC), the city server on that chain, a card enrolled there, and a benefit check in
headless Chromium with the card through pcscd + vpcd; with a ``[printer]`` on a real pty (issue 13): card
tap → verdict → "print my certificate" → the ESC/POS emulator's receipt → zxing-cpp → verified on anvil.

As a default deployment: the city server has an authorization key, counter and kiosk are authorized on
chain, the counter writes the authorization root to the card and the kiosk authenticates to it with the
certificate ``kiosk serve`` renews from ``[server]`` (docs/card-profile.md §Terminal authentication)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from emulators.card.citizen_card import make_citizen_card
from emulators.card.transport import InProcessConnection
from werkzeug.serving import make_server

from cityid.chain.live import LiveChainView
from cityid.credential import AGE_OVER_65, BUSAN_RESIDENT, CLAIM_NAMES
from server.app import create_app as create_server_app
from server.config import ManagementKeyConfig, ServerConfig
from server.db import Database
from server.keys import KeystoreSigner
from terminal.config import load_config
from terminal.flows.authorization import CertificateRenewer, TerminalAuthorization
from terminal.flows.counter import CitizenRequest, CounterEnrollment
from terminal.server_client import ServerClient
from terminal.verifier import NonceStore, Verifier
from terminal.web import create_app
from terminal.web_cli import _backends, _printing
from tests.integration.ui_support import Slot, serving, type_pin, visible_text
from tests.unit.server_support import (
    TEST_MASTER_KEY,
    publish_for_tests,
    registrar_gateway,
    terminal_key_file,
)

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.anvil]

PIN = "192837"


@dataclass
class CityServer:
    url: str
    client: ServerClient
    app: Any
    db: Database
    counter_auth: TerminalAuthorization  # the counter's certificate and the city's authorization root


@pytest.fixture
def city_server(anvil_chain: Any, tmp_path: Path) -> Iterator[CityServer]:
    signer = KeystoreSigner(ec.generate_private_key(ec.SECP256R1()))
    gateway = registrar_gateway(anvil_chain.network, anvil_chain.client(), anvil_chain.accounts[0])
    publish_for_tests(gateway, signer.public_point)
    db_url = f"sqlite:///{tmp_path / 'server.db'}"
    db = Database.from_url(db_url)
    db.init()  # `city-server db init`
    # per-card management keys (docs/card-profile.md): a software master key, tests only
    card_keys = ManagementKeyConfig("software", software_master_key=TEST_MASTER_KEY.hex())
    authorization_key = KeystoreSigner(ec.generate_private_key(ec.SECP256R1()))  # [authorization_key]
    app = create_server_app(
        ServerConfig(database_url=db_url, management_key=card_keys), chain=gateway, signer=signer, db=db,
        authorization_signer=authorization_key,
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    db.add_terminal("counter-anvil", pem.decode())
    app.extensions["cityid.terminals"].authorize("counter-anvil", CLAIM_NAMES)  # on anvil
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{http.server_port}"
    client = ServerClient(url, "counter-anvil", key, clerk="clerk-a")
    counter_auth = TerminalAuthorization("counter-anvil", key)
    assert CertificateRenewer(counter_auth, client.terminal_certificate).renew_once()
    try:
        yield CityServer(url, client, app, db, counter_auth)
    finally:
        http.shutdown()
        http.server_close()


def _kiosk_key(city: CityServer, tmp_path: Path) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    """The kiosk's terminal key (file 0600), registered and authorized for the benefit check on chain."""
    key_file = tmp_path / "kiosk-key.pem"
    key = terminal_key_file(key_file, city.db, "kiosk-anvil", city.app, (BUSAN_RESIDENT, AGE_OVER_65))
    return key, key_file


def _kiosk_config(anvil_chain: Any, slot: Slot, tmp_path: Path, extra: str = "") -> Path:
    network_file = tmp_path / "network.json"
    anvil_chain.network.save(network_file)
    config_file = tmp_path / "kiosk.toml"
    config_file.write_text(
        "[terminal]\n"
        'mode = "kiosk"\nid = "kiosk-anvil"\naudience = "https://kiosk.busan.go.kr/kiosk-anvil"\n'
        f'language = "en"\nreader = "{slot.reader}"\nrequire_clock_sync = false\n'
        f'[chain]\nnetwork = "{anvil_chain.network.name}"\nnetwork_file = "network.json"\n' + extra,
        "utf-8",
    )
    return config_file


def _enrolled_card(anvil_chain: Any, city: CityServer, tmp_path: Path) -> Path:
    """A citizen enrolled at a counter on the same chain (the card gets the city's authorization root);
    returns the card's state file."""
    card_state = tmp_path / "card.json"
    view = LiveChainView(anvil_chain.client(), anvil_chain.network)
    counter = CounterEnrollment(
        city.client, Verifier(view, "counter-anvil", NonceStore()), authorization=city.counter_auth
    )
    request = CitizenRequest(
        family_name="Yoon", given_name="Sumin", birthdate="1949-07-07", district="Yeongdo-gu",
        busan_resident=True, new_pin=PIN, new_puk="31415926",
    )  # fmt: skip
    counter.run(InProcessConnection(make_citizen_card(card_state)), request)
    return card_state


def _benefit_check(page: Any, slot: Slot, card_state: Path) -> None:
    page.wait_for_selector("#idle-title")
    slot.insert(lambda: make_citizen_card(card_state))
    page.wait_for_url("**/services")
    page.click("#service-benefit-check")
    page.click("#agree")
    page.wait_for_url("**/pin")
    type_pin(page, PIN)
    page.click("#pin-ok")
    page.wait_for_url("**/verdict")


def test_kiosk_serve_config_on_anvil(
    anvil_chain: Any, city_server: CityServer, slot: Slot, page: Any, tmp_path: Path, screenshot: Any,
) -> None:  # fmt: skip
    _key, key_file = _kiosk_key(city_server, tmp_path)
    extra = f'[server]\nurl = "{city_server.url}"\nterminal_key = "{key_file}"\n'
    config = load_config(_kiosk_config(anvil_chain, slot, tmp_path, extra))
    assert config.chain.network_file == str(tmp_path / "network.json")
    assert config.terminal_authentication  # the default
    card_state = _enrolled_card(anvil_chain, city_server, tmp_path)

    kiosk, none = _backends(config)  # exactly what `kiosk serve --config kiosk.toml` builds
    assert none is None
    authorization = kiosk.flow.authorization  # type: ignore[union-attr]
    assert authorization is not None and authorization.current().body.claims == (BUSAN_RESIDENT, AGE_OVER_65)
    with serving(create_app(replace(config, port=0), kiosk=kiosk), page) as url:
        page.goto(url + "/")
        _benefit_check(page, slot, card_state)
        screenshot(page, "verdict-on-anvil")
        assert "You are eligible" in visible_text(page)


def test_print_my_certificate_on_anvil(
    anvil_chain: Any, city_server: CityServer, slot: Slot, page: Any, tmp_path: Path, screenshot: Any,
) -> None:  # fmt: skip
    """Issue 13 end to end on a real node: the kiosk's desk from ``[printer]`` + ``[server]`` (web_cli), the
    receipt from the ESC/POS stream on a pty, its QR verified against anvil and the city server."""
    import zxingcpp
    from emulators.printer import PrinterEmulator
    from emulators.ptys import PtyPair

    from cityid import certificate as c
    from terminal.certificate_client import HttpKioskDirectory, HttpProofSource

    _key, key_file = _kiosk_key(city_server, tmp_path)  # the city registers and authorizes the kiosk's key
    with PtyPair() as pair:
        emu = PrinterEmulator(pair.device)
        try:
            extra = (f'[server]\nurl = "{city_server.url}"\nterminal_key = "{key_file}"\n'
                     f'[printer]\nport = "{pair.host}"\nbaudrate = 115200\n')  # fmt: skip
            config = load_config(_kiosk_config(anvil_chain, slot, tmp_path, extra))
            card_state = _enrolled_card(anvil_chain, city_server, tmp_path)
            kiosk, _ = _backends(config)
            printing = _printing(config, kiosk)  # what `kiosk serve` builds from [printer]
            assert printing is not None
            with serving(create_app(replace(config, port=0), kiosk=kiosk, printing=printing), page) as url:
                page.goto(url + "/")
                _benefit_check(page, slot, card_state)
                assert page.is_visible("#print") and emu.receipts == []  # nothing printed unasked
                page.click("#print")
                page.wait_for_selector("#print-confirmation")
                screenshot(page, "verdict-printed-on-anvil")
                confirmation = page.inner_text("#print-confirmation").strip()
            (receipt,) = emu.wait_receipts(1)
            assert receipt.complete
            (qr,) = [r.text for r in zxingcpp.read_barcodes(receipt.image().convert("L"))]
        finally:
            emu.stop()
    verifier = c.CertificateVerifier(
        HttpKioskDirectory(city_server.url),
        c.ChainAnchorChecker(anvil_chain.client(), anvil_chain.network),
        HttpProofSource(city_server.url),
    )
    with pytest.raises(c.CertificateRejected) as early:
        verifier.verify(qr)  # queued, not anchored until the batch window closes
    assert early.value.reason is c.Rejection.PENDING
    assert city_server.app.extensions["cityid.certificates"].queue.flush(force=True) == 1  # one anvil tx
    verified = verifier.verify(qr)
    assert verified.confirmation == confirmation and verified.kiosk == "kiosk-anvil"
    assert verified.service == "benefit-check"
    assert verified.facts == {"busan_resident": True, "age_over_65": True}  # exactly what the service got
