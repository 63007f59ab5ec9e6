"""A city on a real anvil node for the chain-outbox tests and benchmark: contracts deployed by the root
(anvil account 0), the hot registrar key (account 1) with its status list, the issuer key published and
accredited — what the ceremonies leave behind (docs/chain.md §Roles)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cityid.chain.contracts import Events
from cityid.chain.network import NetworkConfig
from cityid.chain.rpc import HttpTransport, RpcClient
from tests.fixtures.anvil_node import anvil_accounts

KEYSTORE_PASSWORD = "pw-outbox-tests"


@dataclass
class City:
    network_path: Path
    network: NetworkConfig
    hot_key: str  # 0x-hex private key of anvil's account 1 (public development mnemonic)
    keystore: Path

    def env(self, db_url: str) -> dict[str, str]:
        """Environment for ``city-server`` on this city."""
        return {
            "CITY_SERVER_DB_URL": db_url,
            "CITY_SERVER_CHAIN": str(self.network_path),
            "CITY_CHAIN_PRIVATE_KEY": self.hot_key,
            "CITY_ISSUER_KEYSTORE": str(self.keystore),
            "CITY_ISSUER_KEY_PASSWORD": KEYSTORE_PASSWORD,
        }

    def client(self) -> RpcClient:
        return RpcClient(HttpTransport(self.network.rpc_url))

    def registrar(self) -> Any:
        from server.chain.registrar import Registrar

        return Registrar(self.network, self.client(), anvil_accounts(2)[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_city(rpc_url: str, tmp: Path) -> City:
    from cityid.credential import VCT
    from server.chain.issuer import ensure_status_list, publish_issuer
    from server.chain.registrar import Registrar, deploy_all
    from server.config import IssuerKeyConfig
    from server.keys import load_signer

    root, hot = anvil_accounts(2)
    client = RpcClient(HttpTransport(rpc_url))
    network = deploy_all(client, root, name="anvil", rpc_url=rpc_url, registrar=hot.address)
    path = tmp / "network.json"
    network.save(path)
    ensure_status_list(Registrar(network, client, hot), 1)
    keystore = tmp / "issuer.p8"
    signer = load_signer(IssuerKeyConfig(keystore_path=str(keystore), keystore_password=KEYSTORE_PASSWORD,
                                         create_if_missing=True))  # fmt: skip
    publish_issuer(Registrar(network, client, root), signer.public_point, VCT)
    return City(path, network, "0x" + hot.key.hex(), keystore)


def key_events(city: City) -> dict[str, int]:
    """DIDAttributeChanged events per identity (a key added or revoked twice shows up as an extra one)."""
    reg = city.registrar()
    topic = "0x" + Events.of(reg.dids.contract_name).topics["DIDAttributeChanged"].hex()
    query = {"fromBlock": "0x0", "toBlock": "latest", "address": reg.dids.address, "topics": [topic]}
    logs = city.client().request("eth_getLogs", [query])
    out: dict[str, int] = {}
    for log in logs:
        identity = "0x" + log["topics"][1][-40:]
        out[identity.lower()] = out.get(identity.lower(), 0) + 1
    return out


def in_process_server(city: City, db_url: str, window_ms: int = 300, start_writer: bool = True) -> Any:
    """``(app, client)``: the server app on this city (its writer thread running unless ``start_writer`` is
    False) and a signed counter client talking to it through Flask's test client (no sockets)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from server.app import create_app
    from server.config import IssuerKeyConfig, ServerConfig
    from terminal.server_client import ServerClient
    from tests.unit.server_support import FlaskTransport

    cfg = ServerConfig(
        database_url=db_url, chain=str(city.network_path), chain_private_key=city.hot_key,
        chain_window_ms=window_ms,
        issuer_key=IssuerKeyConfig(keystore_path=str(city.keystore), keystore_password=KEYSTORE_PASSWORD),
    )  # fmt: skip
    from server.db import Database

    Database.from_url(db_url).init()  # `city-server db init` (idempotent)
    app = create_app(cfg, start_writer=start_writer)
    tkey = ec.generate_private_key(ec.SECP256R1())
    pem = tkey.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    app.extensions["cityid.db"].add_terminal("counter-1", pem)
    client = ServerClient("http://city.test", "counter-1", tkey, session=FlaskTransport(app), clerk="clerk-f")
    return app, client
