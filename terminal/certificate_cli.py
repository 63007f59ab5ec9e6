"""``kiosk verify-certificate FILE|QR-TEXT`` — check a printed certificate (docs/certificates.md).

The certificate comes as the QR text itself (``BC1:…``), a file holding it, or a receipt image (PNG/JPEG,
decoded with zxing-cpp when installed). Kiosk keys and proofs come from the city server (``--server``) or a
JSON file of kiosk id → public JWK (``--kiosks``, then the QR must carry its proof); the anchor is read from
the chain of ``--network`` (a NetworkConfig JSON file) or of the kiosk config's ``[chain]`` (``--config``).
Exit status: 0 valid, 3 refused (reason printed), 1 usage or set-up error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from cityid.certificate import (
    CertificateRejected,
    CertificateVerifier,
    ChainAnchorChecker,
    StaticKioskDirectory,
    VerifiedCertificate,
)
from cityid.cli_util import Subcommands
from cityid.errors import CityIdError

EXIT_REFUSED = 3
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def read_source(source: str) -> str:
    """QR text from an argument: the text itself, a text file, or a receipt image."""
    if source.startswith("BC1:"):
        return source
    path = Path(source)
    if not path.is_file():
        raise CityIdError(f"{source}: neither certificate text (BC1:…) nor a file")
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        return decode_image(path)
    if path.stat().st_size > 64 * 1024:
        raise CityIdError(f"{source}: too large for a certificate")
    return path.read_text(encoding="utf-8").strip()


def decode_image(path: Path) -> str:
    """The certificate QR in an image (zxing-cpp)."""
    try:
        import zxingcpp
        from PIL import Image
    except ImportError:
        raise CityIdError("reading a receipt image needs zxing-cpp (pip install zxing-cpp)") from None
    with Image.open(path) as img:
        found = [r.text for r in zxingcpp.read_barcodes(img.convert("L")) if r.text.startswith("BC1:")]
    if not found:
        raise CityIdError(f"{path}: no certificate QR code found in the image")
    return found[0]


def _network(args: argparse.Namespace) -> Any:
    from cityid.chain.network import NetworkConfig

    if args.network:
        return NetworkConfig.load(args.network)
    if args.config:
        from terminal.config import load_config

        chain = load_config(args.config).chain
        if chain.embedded:
            raise CityIdError("the config's chain is embedded (demo only): give --network")
        if chain.network_file:
            return NetworkConfig.load(chain.network_file)
        data = {
            "name": chain.network,
            "chain_id": chain.chain_id,
            "rpc_url": chain.rpc,
            "addresses": chain.addresses,
        }
        return NetworkConfig.from_json(data)
    raise CityIdError("say which chain to check: --network FILE or --config FILE")


def build_verifier(args: argparse.Namespace) -> CertificateVerifier:
    from cityid.chain.rpc import connect

    network = _network(args)
    checker = ChainAnchorChecker(connect(network.rpc_url), network)
    if args.kiosks:
        kiosks: Any = StaticKioskDirectory.from_json(
            json.loads(Path(args.kiosks).read_text(encoding="utf-8"))
        )
        proofs: Any = None
    elif args.server:
        from terminal.certificate_client import HttpKioskDirectory, HttpProofSource

        kiosks, proofs = HttpKioskDirectory(args.server), HttpProofSource(args.server)
    else:
        raise CityIdError("say who authorises kiosks: --server URL (the city server) or --kiosks FILE")
    if args.kiosks and args.server:
        from terminal.certificate_client import HttpProofSource

        proofs = HttpProofSource(args.server)
    return CertificateVerifier(kiosks, checker, proofs)


def _when(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def report(v: VerifiedCertificate) -> str:
    lines = [
        "VALID certificate",
        f"  confirmation  {v.confirmation}",
        f"  service       {v.service}",
        f"  kiosk         {v.kiosk}",
        f"  issued        {_when(v.issued_at)}",
        f"  valid until   {_when(v.expires_at)}",
        f"  anchored      {_when(v.anchored_at)}",
    ]
    lines += [f"  {name:<13} {value}" for name, value in v.facts.items()]
    return "\n".join(lines)


def cmd_verify(args: argparse.Namespace) -> int:
    text = read_source(args.source)
    verifier = build_verifier(args)
    try:
        result = verifier.verify(text)
    except CertificateRejected as exc:
        if args.json:
            print(json.dumps({"valid": False, "reason": exc.reason.value, "message": str(exc)}))
        else:
            print(f"REFUSED ({exc.reason.value}): {exc}")
        return EXIT_REFUSED
    if args.json:
        out = {"valid": True, "confirmation": result.confirmation, "service": result.service,
               "kiosk": result.kiosk, "issued_at": result.issued_at, "expires_at": result.expires_at,
               "anchored_at": result.anchored_at, "facts": result.facts}  # fmt: skip
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(report(result))
    return 0


def register(sub: Subcommands) -> None:
    """Add ``verify-certificate``."""
    p = sub.add_parser("verify-certificate", help="check a printed certificate (QR text, text file or image)")
    p.add_argument("source", metavar="FILE|QR-TEXT", help="BC1:… text, a file holding it, or a receipt image")
    p.add_argument("--server", metavar="URL", help="city server: kiosk keys and anchor proofs")
    p.add_argument(
        "--kiosks", metavar="FILE", help="JSON {kiosk id: public JWK} instead of asking the server"
    )
    p.add_argument("--network", metavar="FILE", help="chain: a NetworkConfig JSON file (rpc_url, addresses)")
    p.add_argument("--config", metavar="FILE", help="chain: the kiosk config's [chain]")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_verify)
