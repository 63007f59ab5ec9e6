"""``kiosk``: the kiosk / counter terminal app."""

from __future__ import annotations

from collections.abc import Sequence

from cityid.cli_util import build_parser, run

COMMAND_MODULES = (
    "terminal.web_cli",  # kiosk serve|clerk-password (demo: citydemo entry point)
    "terminal.certificate_cli",  # kiosk verify-certificate
    "terminal.sync_cli",  # kiosk sync
    "terminal.doctor_cli",  # kiosk doctor
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser("kiosk", "Busan citizen-ID kiosk and counter terminal", COMMAND_MODULES)
    return run(parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
