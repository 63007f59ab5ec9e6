"""Serial peripherals of a terminal: ESC/POS receipt printer, QR/barcode scanner (docs/printer.md)."""
