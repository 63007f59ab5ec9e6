"""Kiosk-side verification of Busan citizen presentations (docs/credential-format.md §Verification)."""

from terminal.verifier.messages import MESSAGES, CheckName, message
from terminal.verifier.nonces import NonceStore
from terminal.verifier.verifier import PresentationKind, Verdict, Verifier

__all__ = ["MESSAGES", "CheckName", "NonceStore", "PresentationKind", "Verdict", "Verifier", "message"]
