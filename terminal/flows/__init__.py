"""Terminal flows: multi-step procedures over applet sessions (counter enrollment, kiosk verification)."""
