"""``cardtool``: virtual cards (emulators), card personalization, PIN management and reader diagnostics."""

from __future__ import annotations

from collections.abc import Sequence

from cityid.cli_util import build_parser, run

#: Each module contributes sub-commands through ``register(subparsers)``.
COMMAND_MODULES = (
    "firmware_tools.emulate_cli",  # cardtool emulate citizen|fido
    "firmware_tools.card_cli",  # cardtool info|personalize|pin
    "firmware_tools.fido_cli",  # cardtool fido info|pin|credentials|reset
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(
        "cardtool", "Busan citizen card tools: emulate, inspect and personalize cards", COMMAND_MODULES
    )
    return run(parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
