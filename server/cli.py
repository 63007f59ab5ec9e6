"""``city-server``: the city's issuer/registrar service and its chain administration."""

from __future__ import annotations

from collections.abc import Sequence

from cityid.cli_util import build_parser, run

COMMAND_MODULES = (
    "server.chain_cli",  # city-server chain deploy|...
    "server.app_cli",  # city-server serve|terminal|...
    "server.doctor_cli",  # city-server doctor
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser("city-server", "Busan citizen-ID issuer and registrar service", COMMAND_MODULES)
    return run(parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
