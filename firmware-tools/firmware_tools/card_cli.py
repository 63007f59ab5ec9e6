"""Sub-commands (placeholder until the feature lands: registers nothing)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's sub-commands."""
