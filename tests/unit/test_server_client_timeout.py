"""ServerClient against a city server that accepts the connection and never answers (frozen): a typed,
retryable ServerError within the client's timeout (the counter's is ``COUNTER_TIMEOUT``, 5 s; issue 15
item 4); a closed port is "unreachable", not a timeout."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from terminal.server_client import ServerClient, ServerError


@pytest.fixture
def frozen_server() -> Iterator[str]:
    """A listening socket nobody accepts from: the kernel completes the TCP handshake, no byte comes back."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_a_frozen_server_is_a_retryable_timeout_within_the_limit(frozen_server: str) -> None:
    client = ServerClient(frozen_server, "counter-1", ec.generate_private_key(ec.SECP256R1()), timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(ServerError) as err:
        client.status("cred-1")
    waited = time.monotonic() - t0
    assert err.value.code == "timeout" and err.value.retryable and err.value.status == 0
    assert 0.4 < waited < 2.0


def test_a_closed_port_is_unreachable_not_a_timeout() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    client = ServerClient(f"http://127.0.0.1:{port}", "c", ec.generate_private_key(ec.SECP256R1()), timeout=2)
    with pytest.raises(ServerError) as err:
        client.status("cred-1")
    assert err.value.code == "unreachable" and err.value.retryable
