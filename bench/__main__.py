"""``./dev bench``: print every benchmark figure the issues ask for.

Each ``bench.<area>`` module has ``run(args) -> None`` that prints its figures (medians/p95 over many runs,
or ratios). ``./dev bench card chain`` runs only those areas.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

AREAS = (
    "card", "card_terminal", "fido", "chain", "chain_sync", "credentials", "ui", "server", "outbox",
    "printing",
)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument("areas", nargs="*", metavar="AREA", help=f"some of: {', '.join(AREAS)}")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = parser.parse_args()
    # an application entry point: warnings only (keeps werkzeug's per-request lines out of the figures)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    failed = 0
    for area in args.areas or AREAS:
        try:
            module = importlib.import_module(f"bench.{area}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bench.{area}":
                raise
            print(f"== {area}: no benchmark yet")
            continue
        print(f"== {area}", flush=True)
        try:
            module.run(args)
        except Exception as exc:  # a broken benchmark must not hide the others' figures
            failed += 1
            print(f"   FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
