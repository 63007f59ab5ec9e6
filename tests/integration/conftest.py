"""The browser tests' shared fixtures (``world``, ``slot``, ``kiosk``: tests/integration/ui_support.py); a
module's own fixture of the same name takes precedence."""

from tests.integration.ui_support import kiosk, slot, world

__all__ = ["kiosk", "slot", "world"]
