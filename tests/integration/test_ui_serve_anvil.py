"""`kiosk serve`'s production wiring on a real node: the kiosk built from a TOML config with a network file
(anvil over HTTP JSON-RPC), the city server on that chain, a card enrolled there, and a benefit check in
headless Chromium with the card through pcscd + vpcd."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from emulators.card.citizen_card import make_citizen_card
from emulators.card.transport import InProcessConnection
from werkzeug.serving import make_server

from cityid.chain.live import LiveChainView
from server.app import create_app as create_server_app
from server.config import ServerConfig
from server.db import Database
from server.keys import KeystoreSigner
from terminal.config import load_config
from terminal.flows.counter import CitizenRequest, CounterEnrollment
from terminal.server_client import ServerClient
from terminal.verifier import NonceStore, Verifier
from terminal.web import create_app
from terminal.web_cli import _backends
from tests.integration.ui_support import Slot, serving, type_pin, visible_text
from tests.unit.server_support import publish_for_tests, registrar_gateway

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.anvil]

PIN = "192837"


@pytest.fixture
def city_server(anvil_chain: Any, tmp_path: Path) -> Iterator[tuple[str, ServerClient]]:
    signer = KeystoreSigner(ec.generate_private_key(ec.SECP256R1()))
    gateway = registrar_gateway(anvil_chain.network, anvil_chain.client(), anvil_chain.accounts[0])
    publish_for_tests(gateway, signer.public_point)
    db_url = f"sqlite:///{tmp_path / 'server.db'}"
    db = Database.from_url(db_url)
    app = create_server_app(ServerConfig(database_url=db_url), chain=gateway, signer=signer, db=db)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    db.add_terminal("counter-anvil", pem.decode())
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{http.server_port}"
    try:
        yield url, ServerClient(url, "counter-anvil", key, clerk="clerk-a")
    finally:
        http.shutdown()
        http.server_close()


def test_kiosk_serve_config_on_anvil(
    anvil_chain: Any, city_server: tuple[str, ServerClient], slot: Slot, page: Any, tmp_path: Path,
    screenshot: Any,
) -> None:  # fmt: skip
    _, client = city_server
    network_file = tmp_path / "network.json"
    anvil_chain.network.save(network_file)
    config_file = tmp_path / "kiosk.toml"
    config_file.write_text(
        "[terminal]\n"
        'mode = "kiosk"\nid = "kiosk-anvil"\naudience = "https://kiosk.busan.go.kr/kiosk-anvil"\n'
        f'language = "en"\nreader = "{slot.reader}"\nrequire_clock_sync = false\n'
        f'[chain]\nnetwork = "{anvil_chain.network.name}"\nnetwork_file = "network.json"\n',
        "utf-8",
    )
    config = load_config(config_file)
    assert config.chain.network_file == str(network_file)

    # a citizen enrolled at a counter on the same chain
    card_state = tmp_path / "card.json"
    view = LiveChainView(anvil_chain.client(), anvil_chain.network)
    counter = CounterEnrollment(client, Verifier(view, "https://counter.busan.go.kr/c-anvil", NonceStore()))
    request = CitizenRequest(
        family_name="Yoon", given_name="Sumin", birthdate="1949-07-07", district="Yeongdo-gu",
        busan_resident=True, new_pin=PIN, new_puk="31415926",
    )  # fmt: skip
    counter.run(InProcessConnection(make_citizen_card(card_state)), request)

    kiosk, none = _backends(config)  # exactly what `kiosk serve --config kiosk.toml` builds
    assert none is None
    with serving(create_app(replace(config, port=0), kiosk=kiosk), page) as url:
        page.goto(url + "/")
        page.wait_for_selector("#idle-title")
        slot.insert(lambda: make_citizen_card(card_state))
        page.wait_for_url("**/services")
        page.click("#service-benefit-check")
        page.click("#agree")
        page.wait_for_url("**/pin")
        type_pin(page, PIN)
        page.click("#pin-ok")
        page.wait_for_url("**/verdict")
        screenshot(page, "verdict-on-anvil")
        assert "You are eligible" in visible_text(page)
