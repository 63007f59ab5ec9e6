"""Printing figures (issue 13): "print" → last byte over a real pty at 115200 and 9600 baud (the emulator
paces the line at 10 bits per byte and the mechanism at 300 mm/s), anchoring gas per certificate in batches of
100 and 1000 (goal ≤ 1,000), and verification time of a scanned certificate (goal ≤ 10 ms warm).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time

import zxingcpp
from cryptography.hazmat.primitives.asymmetric import ec
from emulators.printer import PrinterEmulator
from emulators.ptys import PtyPair

from bench._stats import summary_ms, timed
from cityid import certificate as c
from cityid.keys import P256PublicKey
from server.chain.registrar import Registrar, start_embedded
from terminal.flows.certificate import receipt_blocks
from terminal.flows.kiosk import SERVICES
from terminal.peripherals.printer import PrinterSettings, ReceiptPrinter

FACTS = {"family_name": "김", "given_name": "민지", "district": "Haeundae-gu", "busan_resident": True}
SPEED_MM_S = 300  # Epson TM-T88V


def _certificate(key: ec.EllipticCurvePrivateKey, anchor: str) -> c.Certificate:
    service = SERVICES["residence"]
    return c.issue(
        key, kiosk="kiosk-1", service=service.id, facts=FACTS, requested=service.claims, anchor=anchor
    )


def _print_once(cert: c.Certificate, baud: int) -> tuple[float, float, int]:
    """(s to last byte, s to paper out of the mechanism, bytes) for one receipt."""
    with PtyPair() as pair:
        emu = PrinterEmulator(pair.device, baudrate=baud, print_speed_mm_s=SPEED_MM_S)
        printer = ReceiptPrinter(PrinterSettings(port=pair.host, baudrate=baud), status_timeout=0.5)
        try:
            printer.status()  # port open and printer answering before the clock starts
            blocks = receipt_blocks(cert)
            size = len(printer.encode(blocks))
            t0 = time.perf_counter()
            printer.print(blocks)
            (receipt,) = emu.wait_receipts(1)
            assert receipt.complete
            assert zxingcpp.read_barcodes(receipt.image().convert("L"))[0].text == cert.qr_text()
            return (emu.last_byte_at or t0) - t0, max(emu.mech_done_at, emu.last_byte_at or t0) - t0, size
        finally:
            printer.close()
            emu.stop()


def bench_print(cert: c.Certificate, quick: bool) -> None:
    for baud in (115200, 9600):
        runs = [_print_once(cert, baud) for _ in range(1 if quick or baud == 9600 else 3)]
        last = statistics.median(r[0] for r in runs)
        paper = statistics.median(r[1] for r in runs)
        size = runs[0][2]
        line = size * 10 / baud * 1000
        print(f"   print → last byte   {baud:>6} baud: {last * 1000:7.0f} ms  (receipt {size} bytes;")
        print(f"      line alone {line:.0f} ms; paper out at {SPEED_MM_S} mm/s after {paper * 1000:.0f} ms)")


def bench_gas() -> None:
    chain = start_embedded("bench-printing")
    registrar = Registrar(chain.network, chain.client(), chain.accounts[0])
    for n in (1, 100, 1000):
        hashes = [hashlib.sha256(os.urandom(32)).digest() for _ in range(n)]
        gas = registrar.anchor_batch(hashes).receipt.gas_used
        per = gas / n
        print(f"   anchoring gas, batch of {n:>4}: {gas:>7,} per tx = {per:>6,.0f} per cert (goal ≤ 1,000)")


def bench_verify(quick: bool) -> None:
    chain = start_embedded("bench-verify")
    registrar = Registrar(chain.network, chain.client(), chain.accounts[0])
    checker = c.ChainAnchorChecker(chain.client(), chain.network)
    key = ec.generate_private_key(ec.SECP256R1())
    certs = [_certificate(key, checker.anchor) for _ in range(100)]
    batch = registrar.anchor_batch([x.document_hash for x in certs])
    qrs = [
        x.with_proof(c.AnchorProof(batch.root, p)).qr_text() for x, p in zip(certs, batch.proofs, strict=True)
    ]
    kiosks = c.StaticKioskDirectory({"kiosk-1": P256PublicKey.from_crypto(key.public_key())})
    verifier = c.CertificateVerifier(kiosks, checker)
    t0 = time.perf_counter()
    verifier.verify(qrs[0])
    cold = time.perf_counter() - t0
    it = iter(qrs * 50)
    samples = timed(lambda: verifier.verify(next(it)), 100 if quick else 1000, warmup=5)
    print(f"   verify scanned certificate, cold (anchorOf on the embedded node): {cold * 1000:.2f} ms")
    print(f"   verify scanned certificate, warm (root known):  {summary_ms(samples)}   goal ≤ 10 ms")
    print(f"   QR text: {len(qrs[0])} characters with a proof of {len(batch.proofs[0])} siblings")


def run(args: argparse.Namespace) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(key, "eip155:31337:0x" + "11" * 20)
    bench_print(cert, args.quick)
    bench_gas()
    bench_verify(args.quick)
