"""``kiosk doctor``: check a kiosk or counter host end to end, one line per check with the fix.

Configuration, session secret, terminal key and its permissions, pcscd and the readers, the chain
(reachable, chain id, contract code at the configured addresses, head age), the city server, terminal
authentication (a certificate from the city server; an explicit opt-out is a failure: lab/test setups
only), clock synchronisation, the listening port, the receipt printer's port (if configured).
``--diagnose``: a JSON dump for support. docs/operations.md §Diagnostics.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

from cityid.cli_util import Subcommands
from cityid.doctor import (
    Check,
    Fail,
    Unknown,
    check_chain,
    check_clock,
    check_port,
    check_secret_file,
    exit_code,
    run_checks,
)
from cityid.doctor import diagnose as dump
from cityid.errors import CityIdError
from cityid.secrets import secret


def register(sub: Subcommands) -> None:
    """Add ``doctor``."""
    p = sub.add_parser("doctor", help="check this kiosk/counter host end to end", description=__doc__)
    p.add_argument("--config", required=True, metavar="FILE", help="the terminal's TOML configuration")
    p.add_argument("--diagnose", action="store_true", help="also print a JSON dump for support")
    p.set_defaults(func=_doctor)


class _Host:
    """The checks of one host; later checks reuse what earlier ones found (the config, the readers)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.config: Any = None
        self.readers: list[str] = []
        self.pcscd_ok = False

    def _cfg(self) -> Any:
        if self.config is None:
            raise Unknown("skipped: no valid configuration")
        return self.config

    def config_check(self) -> str:
        from terminal.config import load_config

        try:
            self.config = load_config(self.path)
        except CityIdError as exc:
            raise Fail(str(exc), f"edit {self.path} (reference: docs/ui.md)") from None
        return f"{self.path}: {self.config.mode.value} terminal {self.config.terminal_id!r}"

    def secret_check(self) -> str:
        self._cfg()
        value = secret("CITYID_KIOSK_SECRET") or ""
        if not value:
            raise Fail(
                "CITYID_KIOSK_SECRET not set: sessions reset at every restart",
                "LoadCredential=CITYID_KIOSK_SECRET:/etc/credstore/cityid-kiosk.session-secret",
            )
        try:
            if len(bytes.fromhex(value)) < 16:
                raise ValueError
        except ValueError:
            raise Fail(
                "CITYID_KIOSK_SECRET is not ≥ 16 bytes of hex",
                "python3 -c 'import secrets; print(secrets.token_hex(32))' > the credential file",
            ) from None
        return "session secret set"

    def _needs_server(self) -> bool:
        """A counter always talks to the city server; a kiosk does for terminal authentication (default)."""
        from terminal.config import Mode

        cfg = self._cfg()
        return cfg.mode is Mode.COUNTER or cfg.terminal_authentication

    def key_check(self) -> str:
        cfg = self._cfg()
        if not self._needs_server():
            return "not needed (kiosk without terminal authentication)"
        if not cfg.terminal_key:
            raise Fail(
                "no [server] terminal_key", "city-server terminal keygen --name ID, then set terminal_key"
            )
        detail = check_secret_file(cfg.terminal_key, "terminal key")
        from terminal.server_client import load_terminal_key

        try:
            load_terminal_key(cfg.terminal_key, secret("CITYID_TERMINAL_KEY_PASSWORD"))
        except (ValueError, TypeError) as exc:  # TerminalKeyError names the file and the cause
            raise Fail(
                str(exc),
                "check CITYID_TERMINAL_KEY_PASSWORD or regenerate the key",
            ) from None
        return detail

    def pcscd_check(self) -> str:
        from terminal.pcsc.connection import list_readers

        try:
            self.readers = list_readers()
        except CityIdError as exc:
            raise Fail(f"pcscd not reachable: {exc}", "systemctl enable --now pcscd.socket") from None
        self.pcscd_ok = True
        return "pcscd answers"

    def readers_check(self) -> str:
        cfg = self._cfg()
        if not self.pcscd_ok:
            raise Unknown("skipped: pcscd not reachable")
        wanted = [r for r in self.readers if cfg.reader in r]
        if not wanted:
            seen = ", ".join(self.readers) or "none"
            raise Fail(
                f"no reader matching {cfg.reader!r} (seen: {seen})",
                "plug the reader in; check udev/README.md and `pcsc_scan`",
            )
        return ", ".join(wanted)

    def chain_check(self) -> str:
        from terminal.web_cli import chain_network

        cfg = self._cfg()
        try:
            network = chain_network(cfg)
        except CityIdError as exc:
            raise Fail(str(exc), "set [chain] network_file or rpc/chain_id/addresses (docs/ui.md)") from None
        return check_chain(network)

    def server_check(self) -> str:
        import requests

        cfg = self._cfg()
        if not self._needs_server():
            return "not needed (kiosk without terminal authentication)"
        if not cfg.server_url:
            raise Fail("no [server] url", "set [server] url to the city server (docs/ui.md)")
        try:
            r = requests.get(f"{cfg.server_url.rstrip('/')}/health", timeout=5)
            issuer = r.json().get("issuer_did")
        except (requests.RequestException, ValueError, AttributeError) as exc:
            raise Fail(
                f"city server {cfg.server_url} unreachable: {type(exc).__name__}",
                "check [server] url and the network",
            ) from None
        return f"{cfg.server_url} up, issuer {issuer}"

    def terminal_auth_check(self) -> str:
        """Terminal authentication (docs/card-profile.md §Terminal authentication): on, and the city server
        issues this terminal a certificate now (the same signed request the renewer sends)."""
        from cityid.terminal_cert import authority_id
        from terminal.config import check_terminal_authentication, terminal_authentication_warning
        from terminal.server_client import ServerClient, ServerError, load_terminal_key

        cfg = self._cfg()
        warning = terminal_authentication_warning(cfg)
        if warning is not None:
            raise Fail(warning, f"remove terminal_authentication = false from {self.path} (production)")
        try:
            check_terminal_authentication(cfg)
        except CityIdError as exc:
            raise Fail(str(exc), f"add [server] url and terminal_key to {self.path} (docs/ui.md)") from None
        try:
            key = load_terminal_key(cfg.terminal_key, secret("CITYID_TERMINAL_KEY_PASSWORD"))
        except (OSError, ValueError, TypeError):
            raise Unknown("skipped: the terminal key does not load (see its check)") from None
        client = ServerClient(cfg.server_url, cfg.terminal_id, key, timeout=5.0)
        try:
            answer = client.terminal_certificate()
        except ServerError as exc:
            if exc.code == "terminal_certificates_disabled":
                raise Fail(
                    "the city server has no [authorization_key]: it issues no terminal certificates, and "
                    "counters refuse to personalize cards",
                    "on the server: city-server authorization-key generate, then [authorization_key] in "
                    "server.toml (docs/server.md)",
                ) from None
            if exc.code == "unauthenticated":  # unknown, disabled, or another key registered
                raise Fail(
                    f"the city server does not know terminal {cfg.terminal_id!r} with this key: {exc}",
                    f"city-server terminal add --name {cfg.terminal_id} --public-key <its .pub.pem>",
                ) from None
            if exc.code == "terminal_not_authorized":
                raise Fail(
                    f"terminal {cfg.terminal_id!r} is not authorized by the city server: {exc}",
                    f"city-server terminal authorize --name {cfg.terminal_id} --claims …",
                ) from None
            raise Fail(str(exc), "check [server] url, the network and the server log") from None
        except CityIdError as exc:  # a malformed or unverifiable answer
            raise Fail(f"bad certificate answer: {exc}", "is [server] url the city server?") from None
        body = answer.certificate.body
        return (
            f"certificate for {len(body.claims)} claim(s) until {body.not_after}, authorization root "
            f"{authority_id(answer.authority_key).hex()}"
        )

    def port_check(self) -> str:
        cfg = self._cfg()
        return check_port(cfg.host, cfg.port, ours=_is_kiosk)

    def printer_check(self) -> str:
        cfg = self._cfg()
        printer = getattr(cfg, "printer", None)
        port = getattr(printer, "port", None) or getattr(printer, "device", None)
        if not port:
            return "none configured"
        path = Path(str(port))
        if not path.exists():
            raise Fail(
                f"printer port {path} does not exist", "plug the printer in; check `ls -l /dev/serial/by-id`"
            )
        if not os.access(path, os.R_OK | os.W_OK):
            raise Fail(
                f"printer port {path} is not writable by this account", "add the account to group dialout"
            )
        return str(path)

    def checks(self) -> list[Check]:
        return [
            Check("config", self.config_check),
            Check("session secret", self.secret_check),
            Check("terminal key", self.key_check),
            Check("pcscd", self.pcscd_check),
            Check("readers", self.readers_check),
            Check("chain", self.chain_check),
            Check("city server", self.server_check),
            Check("terminal authentication", self.terminal_auth_check),
            Check("clock", check_clock),
            Check("port", self.port_check),
            Check("printer", self.printer_check),
        ]


def _is_kiosk(url: str) -> bool:
    import requests

    try:
        return "data-screen=" in requests.get(url + "/", timeout=3).text
    except requests.RequestException:
        return False


def _doctor(args: argparse.Namespace) -> int:
    host = _Host(args.config)
    results = run_checks(host.checks())
    if args.diagnose:
        config = None
        if host.config is not None:
            config = {k: v for k, v in dataclasses.asdict(host.config).items() if "secret" not in k}
            config["counter_clerks"] = sorted(config.pop("clerks", {}) or {})  # names only, never hashes
        dump("kiosk doctor", results, {"config_file": args.config, "config": config, "readers": host.readers})
    return exit_code(results)
