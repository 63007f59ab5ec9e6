"""Host checks for ``kiosk doctor`` and ``city-server doctor`` (docs/operations.md §Diagnostics).

A check is a function returning a short detail (passed) or raising :class:`Fail` (with the fix) or
:class:`Unknown` (the fact cannot be established here — never reported as passed). :func:`run_checks` runs
them in order and prints one line per check; :func:`diagnose` adds a support dump.
Also the checks both tools share: file permissions of secrets, the listening port, the chain, the clock.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from cityid.errors import CityIdError


class Fail(CityIdError):
    """A check failed; ``fix`` says what to do."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


class Unknown(CityIdError):
    """A check could not decide (not a pass)."""

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    run: Callable[[], str]


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    state: str  # "ok" | "FAIL" | "??"
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.state:<4} {self.name}: {self.detail}"
        return f"{text} — fix: {self.fix}" if self.fix else text


def run_checks(checks: Sequence[Check], out: TextIO | None = None) -> list[Outcome]:
    """Run every check (an exception in one never stops the others); print one line each."""
    out = sys.stdout if out is None else out
    results = []
    for check in checks:
        try:
            outcome = Outcome(check.name, "ok", check.run())
        except Fail as exc:
            outcome = Outcome(check.name, "FAIL", exc.problem, exc.fix)
        except Unknown as exc:
            outcome = Outcome(check.name, "??", exc.problem, exc.fix)
        except Exception as exc:  # a bug or an unexpected host state: still one line, still a failure
            outcome = Outcome(
                check.name, "FAIL", f"{type(exc).__name__}: {exc}", "report this with --diagnose"
            )
        results.append(outcome)
        print(outcome.line(), file=out, flush=True)
    return results


def exit_code(results: Sequence[Outcome]) -> int:
    """0 when every check passed, 1 when one failed, 3 when none failed but some were undecided."""
    if any(r.state == "FAIL" for r in results):
        return 1
    return 3 if any(r.state == "??" for r in results) else 0


def diagnose(tool: str, results: Sequence[Outcome], extra: dict[str, Any], out: TextIO | None = None) -> None:
    """The support dump (like ``ykman --diagnose``): host, versions, configuration (redacted), checks."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for dist in ("busan-citizen-id", "flask", "waitress", "pyscard", "fido2", "cryptography", "sqlalchemy"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    dump = {
        "tool": tool,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"system": platform.platform(), "python": sys.version.split()[0], "user": _user()},
        "versions": versions,
        **extra,
        "checks": [{"name": r.name, "state": r.state, "detail": r.detail, "fix": r.fix} for r in results],
    }
    print(json.dumps(dump, indent=2, default=str), file=sys.stdout if out is None else out)


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


# ---- shared checks --------------------------------------------------------------------------------


def check_secret_file(path: str | Path, what: str) -> str:
    """A key file: present, readable by this account, not readable by group or others."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise Fail(
            f"{what} {p} does not exist", "create it (see docs/operations.md) or fix the path"
        ) from None
    except PermissionError:
        raise Fail(
            f"{what} {p}: no permission to look at it", f"give {_user()} access to {p.parent}"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise Fail(f"{what} {p} is not a regular file", "point the configuration at the key file")
    if not os.access(p, os.R_OK):
        raise Fail(f"{what} {p} is not readable by {_user()}", f"chown {_user()} {p} && chmod 600 {p}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise Fail(f"{what} {p} has mode {mode:04o} (others can read it)", f"chmod 600 {p}")
    return f"{p} (mode {mode:04o})"


def check_port(host: str, port: int, ours: Callable[[str], bool] | None = None) -> str:
    """The listening port is free — or already served by this very service (``ours(url)``)."""
    from cityid.serving import PortInUseError, bind_listener

    try:
        bind_listener(host, port).close()
        return f"{host}:{port} free"
    except PortInUseError:
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        if ours is not None and ours(url):
            return f"{host}:{port} served by the running service"
        raise Fail(
            f"{host}:{port} is in use by another program",
            f"stop it (ss -ltnp 'sport = :{port}') or choose another port in the configuration",
        ) from None
    except CityIdError as exc:
        raise Fail(str(exc), "choose another address or port in the configuration") from None


def check_chain(network: Any, head_max_age_s: float = 600.0) -> str:
    """The node answers, serves the configured chain id, has code at every address, and its head is fresh."""
    from cityid.chain.errors import ChainConfigError, ChainError
    from cityid.chain.network import check_network
    from cityid.chain.rpc import HttpTransport, RpcClient, as_dict, as_int

    client = RpcClient(HttpTransport(network.rpc_url, timeout=5.0))
    try:
        block = check_network(client, network)
        head = as_dict(client.request("eth_getBlockByNumber", [hex(block), False]), "block")
        age = time.time() - as_int(head.get("timestamp"), "timestamp")
    except ChainConfigError as exc:
        raise Fail(
            str(exc), "point [chain] at the city's node and network file (chain id, addresses)"
        ) from None
    except ChainError as exc:
        raise Fail(
            f"chain node {network.rpc_url} unreachable: {exc}", "check the node URL, network, firewall"
        ) from None
    if age > head_max_age_s:
        raise Fail(
            f"chain head {block} is {age:.0f} s old (node not syncing?)",
            "check the chain node's peers and sync",
        )
    age_s = max(age, 0)
    return (
        f"chain {network.chain_id} at {network.rpc_url}, head {block} ({age_s:.0f} s old), contract code ok"
    )


def check_clock() -> str:
    """System clock synchronised (systemd-timesyncd/chrony via timedatectl)."""
    tool = shutil.which("timedatectl")
    if tool is None:
        raise Unknown(
            "timedatectl not available: cannot tell whether the clock is synchronised",
            "apt-get install systemd-timesyncd (signed requests and credentials need a true clock)",
        )
    try:
        r = subprocess.run(  # noqa: S603 - a fixed argv from which()
            [tool, "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unknown(f"timedatectl failed: {exc}", "check systemd-timedated") from None
    value = r.stdout.strip()
    if value == "yes":
        return "NTP synchronised"
    if value == "no":
        raise Fail("system clock not NTP-synchronised", "systemctl enable --now systemd-timesyncd")
    raise Unknown("clock synchronisation unknown (no systemd here?)", "run on the host, not in a container")
