"""Printer config, receipt encoding and the certificate layout without a port (docs/printer.md)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cityid import certificate as c
from terminal.config import ConfigError, parse_config
from terminal.flows.certificate import receipt_blocks
from terminal.flows.kiosk import SERVICES
from terminal.peripherals.printer import PrinterSettings, ReceiptPrinter, Text


def test_printer_section() -> None:
    assert parse_config({}).printer is None
    cfg = parse_config({"printer": {"port": "/dev/ttyUSB0", "baudrate": 9600, "flow_control": "rtscts",
                                    "profile": "TM-T88IV", "paper_width": 58}})  # fmt: skip
    assert cfg.printer == PrinterSettings("/dev/ttyUSB0", 9600, "rtscts", "TM-T88IV", 58)
    assert cfg.printer.dots == 360
    for bad, key in (
        ({"baudrate": 1234}, "printer.baudrate"),
        ({"flow_control": "maybe"}, "printer.flow_control"),
        ({"profile": "no-such-printer"}, "printer.profile"),
        ({"paper_width": 72}, "printer.paper_width"),
        ({"speed": 1}, "printer.speed"),
        ({"port": ""}, "printer.port"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse_config({"printer": {"port": "/dev/ttyS0", **bad}})


def test_receipt_has_the_facts_number_and_qr_and_korean_goes_as_raster() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    service = SERVICES["benefit-check"]
    cert = c.issue(key, kiosk="k1", service=service.id, facts={"busan_resident": True, "age_over_65": True},
                   requested=service.claims, anchor="eip155:31337:0x" + "11" * 20)  # fmt: skip
    blocks = receipt_blocks(cert)
    texts = [b.text for b in blocks if isinstance(b, Text)]
    assert cert.confirmation in texts and "경로 우대 자격 확인서" in texts
    assert not any("민지" in t or "birth" in t for t in texts)
    data = ReceiptPrinter(PrinterSettings(port="/dev/null")).encode(blocks)
    assert b"\x1dv0" in data  # Korean lines as GS v 0 raster images
    assert b"\x1d(k" in data and cert.qr_text().encode() in data  # native QR with the certificate
    assert data.endswith(b"\x1dV\x00")  # cut
    assert "경로".encode() not in data and "경로".encode("cp949") not in data  # never as text bytes


def test_verify_certificate_command_is_registered(capsys: pytest.CaptureFixture[str]) -> None:
    from terminal.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["verify-certificate", "--help"])
    assert exit_.value.code == 0 and "FILE|QR-TEXT" in capsys.readouterr().out
    assert main(["verify-certificate", "hello"]) == 1  # neither certificate text nor a file: one clear line
    assert "neither certificate text" in capsys.readouterr().err


class _MemoryQueue:
    """An anchoring queue in memory (counts submissions)."""

    def __init__(self, fail: bool = False) -> None:
        self.submitted: list[bytes] = []
        self.fail = fail

    def submit(self, document_hash: bytes):  # type: ignore[no-untyped-def]
        from cityid.errors import CityIdError

        if self.fail:
            raise CityIdError("unreachable")
        self.submitted.append(document_hash)

    def proof(self, document_hash: bytes):  # type: ignore[no-untyped-def]
        return None


def test_desk_issues_from_an_accepted_verdict_only_and_forgets_old_jobs() -> None:
    from cityid.errors import CityIdError
    from terminal.flows.certificate import AnchorUnavailable, CertificateDesk, JobState
    from terminal.peripherals.printer import PrinterState
    from terminal.verifier import Verdict

    now = [1_800_000_000.0]
    queue = _MemoryQueue()
    desk = CertificateDesk(ec.generate_private_key(ec.SECP256R1()), "k1", "eip155:1:0x" + "22" * 20, queue,
                           None, clock=lambda: now[0])  # fmt: skip
    claims = {"busan_resident": True, "age_over_65": True, "given_name": "민지"}
    verdict = Verdict(ok=True, failed=None, reason="verdict.ok", claims=dict(claims))
    job = desk.issue(verdict, SERVICES["benefit-check"])
    assert job.certificate.payload["facts"] == {"busan_resident": True, "age_over_65": True}
    assert queue.submitted == [job.certificate.document_hash]
    verdict.wipe()  # the verdict screen ends; the job keeps its document for a reprint
    printed = desk.print(job.id)
    assert printed.state is JobState.FAILED and printed.status.state is PrinterState.NOT_CONFIGURED
    with pytest.raises(CityIdError, match="accepted verdict"):
        desk.issue(Verdict(ok=False, failed=None, reason="verdict.reason.x"), SERVICES["benefit-check"])
    with pytest.raises(AnchorUnavailable):
        CertificateDesk(desk._key, "k1", desk.anchor, _MemoryQueue(fail=True), None).issue(
            Verdict(ok=True, failed=None, reason="verdict.ok", claims=dict(claims)), SERVICES["benefit-check"]
        )
    now[0] += 901
    assert desk.jobs() == []
    with pytest.raises(CityIdError, match="no such print job"):
        desk.reprint(job.id)
