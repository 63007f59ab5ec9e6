"""udev/70-cityid-kiosk.rules: syntax (udev(7) grammar) and what the rules do to sample devices.

``udevadm verify`` exists only from systemd 253 (Debian 12 has 252); when present it is run too. The parser
and evaluator below implement the subset of udev(7) the rules use, strictly: an unknown key, a wrong
operator, an unquoted value or a GOTO without its LABEL fails the test.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from pathlib import Path

RULES = Path(__file__).resolve().parents[2] / "udev" / "70-cityid-kiosk.rules"

MATCH_KEYS = {
    "ACTION", "DEVPATH", "KERNEL", "KERNELS", "SUBSYSTEM", "SUBSYSTEMS", "DRIVER", "DRIVERS", "ATTR", "ATTRS",
    "SYSCTL", "ENV", "CONST", "TAG", "TAGS", "TEST", "PROGRAM", "RESULT", "NAME", "SYMLINK",
}  # fmt: skip
ASSIGN_KEYS = {
    "NAME", "SYMLINK", "OWNER", "GROUP", "MODE", "SECLABEL", "ATTR", "SYSCTL", "ENV", "TAG", "RUN", "LABEL",
    "GOTO", "IMPORT", "OPTIONS",
}  # fmt: skip
NEEDS_ATTR = {"ATTR", "ATTRS", "ENV", "SYSCTL", "SECLABEL", "CONST", "IMPORT"}
OPTIONAL_ATTR = {"RUN", "TEST"}  # RUN{program}, TEST{mode}
TOKEN = re.compile(
    r'^(?P<key>[A-Z_]+)(?:\{(?P<attr>[^{}"]+)\})?\s*(?P<op>==|!=|\+=|-=|:=|=)\s*"(?P<value>(?:[^"\\]|\\.)*)"$'
)


def _split(line: str) -> list[str]:
    parts, buf, quoted = [], "", False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(buf.strip())
            buf = ""
        else:
            buf += ch
    assert not quoted, f"unterminated quote in {line!r}"
    parts.append(buf.strip())
    return [p for p in parts if p]


def parse(text: str) -> list[list[tuple[str, str | None, str, str]]]:
    rules = []
    text = re.sub(r"\\\n", " ", text)  # line continuation
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        rule = []
        for tok in _split(line):
            m = TOKEN.match(tok)
            assert m, f"line {n}: bad token {tok!r}"
            key, attr, op, value = m["key"], m["attr"], m["op"], m["value"]
            if op in ("==", "!="):
                assert key in MATCH_KEYS, f"line {n}: {key} cannot be matched"
            else:
                assert key in ASSIGN_KEYS, f"line {n}: {key} cannot be assigned"
            if key not in OPTIONAL_ATTR:
                assert (attr is not None) == (key in NEEDS_ATTR), f"line {n}: {key} attribute braces"
            if key == "MODE":
                assert re.fullmatch(r"0[0-7]{3}", value), f"line {n}: MODE {value!r}"
            rule.append((key, attr, op, value))
        rules.append(rule)
    labels = [v for rule in rules for k, _, _, v in rule if k == "LABEL"]
    for rule in rules:
        for k, _, _, v in rule:
            if k == "GOTO":
                assert v in labels, f"GOTO {v} has no LABEL"
    return rules


def _matches(pattern: str, value: str) -> bool:
    return any(fnmatch.fnmatchcase(value, alt) for alt in pattern.split("|"))


def evaluate(rules: list, device: dict[str, str]) -> dict[str, object]:
    """Apply the rules to a device (``SUBSYSTEM``, ``ACTION`` and ``ENV{X}`` as keys)."""
    out: dict[str, object] = {"TAG": set()}
    env = dict(device)
    i = 0
    skip_to: str | None = None
    while i < len(rules):
        rule = rules[i]
        i += 1
        if skip_to is not None:
            if any(k == "LABEL" and v == skip_to for k, _, _, v in rule):
                skip_to = None
            continue
        matched = True
        for key, attr, op, value in rule:
            if op not in ("==", "!="):
                continue
            actual = env.get(f"ENV{{{attr}}}" if key == "ENV" else key, "")
            if _matches(value, actual) != (op == "=="):
                matched = False
                break
        if not matched:
            continue
        for key, attr, op, value in rule:
            if op in ("==", "!="):
                continue
            if key == "GOTO":
                skip_to = value
            elif key == "TAG":
                out["TAG"].add(value)  # type: ignore[union-attr]
            elif key == "ENV":
                env[f"ENV{{{attr}}}"] = value
                out[f"ENV{{{attr}}}"] = value
            elif key != "LABEL":
                out[key] = value
    return out


CCID_READER = {
    "ACTION": "add", "SUBSYSTEM": "usb", "ENV{DEVTYPE}": "usb_device", "ENV{ID_USB_INTERFACES}": ":0b0000:",
}  # fmt: skip
COMPOSITE_KEY = {  # a YubiKey-like device: HID keyboard + FIDO HID + CCID
    "ACTION": "add", "SUBSYSTEM": "usb", "ENV{DEVTYPE}": "usb_device",
    "ENV{ID_USB_INTERFACES}": ":030101:030000:0b0000:",
}  # fmt: skip
CCID_INTERFACE = {**CCID_READER, "ENV{DEVTYPE}": "usb_interface"}
KEYBOARD = {
    "ACTION": "add",
    "SUBSYSTEM": "usb",
    "ENV{DEVTYPE}": "usb_device",
    "ENV{ID_USB_INTERFACES}": ":030101:",
}
FIDO_HIDRAW = {"ACTION": "add", "SUBSYSTEM": "hidraw", "ENV{ID_SECURITY_TOKEN}": "1"}
OTHER_HIDRAW = {"ACTION": "add", "SUBSYSTEM": "hidraw"}


def test_rules_parse() -> None:
    rules = parse(RULES.read_text())
    assert len(rules) >= 4
    groups = {v for rule in rules for k, _, _, v in rule if k == "GROUP"}
    assert groups == {"kiosk"}


def test_rules_grant_the_kiosk_group_readers_and_fido_keys_only() -> None:
    rules = parse(RULES.read_text())
    for device, kind in ((CCID_READER, "ccid"), (COMPOSITE_KEY, "ccid"), (FIDO_HIDRAW, "fido")):
        out = evaluate(rules, device)
        assert out.get("GROUP") == "kiosk" and out.get("MODE") == "0660", device
        assert out["ENV{CITYID_KIOSK}"] == kind
        assert "uaccess" in out["TAG"]  # type: ignore[operator]
    for device in (KEYBOARD, OTHER_HIDRAW, CCID_INTERFACE, {**CCID_READER, "ACTION": "remove"}):
        out = evaluate(rules, device)
        assert "GROUP" not in out and "MODE" not in out, device


def test_parser_accepts_the_systems_own_rules() -> None:
    """The parser is not stricter than udev: the distribution's FIDO and CCID rules parse (when installed)."""
    for name in ("60-fido-id.rules", "92-libccid.rules", "50-udev-default.rules"):
        for base in (Path("/lib/udev/rules.d"), Path("/usr/lib/udev/rules.d")):
            if (base / name).exists():
                parse((base / name).read_text())
                break


def test_parser_rejects_broken_rules() -> None:
    import pytest

    for bad in (
        'SUBSYSTEM=="usb", GROUP=kiosk',  # unquoted
        'SUBSYSTEM="usb"x, GROUP="kiosk"',
        'GROUP=="kiosk"',  # GROUP cannot be matched
        'ENV=="x"',  # ENV needs {name}
        'SUBSYSTEM=="usb", MODE="660"',
        'SUBSYSTEM=="usb", GOTO="nowhere"',
        'SUBSYSTEM=="usb, GROUP="kiosk"',
        'FOO=="bar"',
    ):
        with pytest.raises(AssertionError):
            parse(bad)


def test_udevadm_verify_when_available() -> None:
    udevadm = shutil.which("udevadm")
    if udevadm is None:
        return
    probe = subprocess.run([udevadm, "verify", "--help"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:  # systemd < 253: no "verify" verb; the parser above is the check
        assert "verify" in (probe.stderr + probe.stdout).lower()
        return
    result = subprocess.run([udevadm, "verify", str(RULES)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
