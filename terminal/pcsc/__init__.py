"""PC/SC access for the terminal: the pyscard connection adapter, the reader monitor and PIN-pad support."""

from terminal.pcsc.connection import PcscConnection, list_readers, open_connection

__all__ = ["PcscConnection", "list_readers", "open_connection"]
