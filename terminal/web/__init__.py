"""The kiosk and counter web app (Flask): screens, event stream, i18n, security headers."""

from terminal.web.app import create_app, shutdown, start

__all__ = ["create_app", "shutdown", "start"]
