"""cityid.serving: waitress with limits, streaming (SSE), graceful stop, access log without personal data."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import requests
from flask import Flask, Response, request

from cityid.errors import CityIdError
from cityid.serving import PortInUseError, ServingLimits, WsgiServer, bind_listener, flask_route_of


@pytest.fixture
def app_and_stop() -> tuple[Flask, threading.Event]:
    app = Flask("serving-test")
    stop = threading.Event()

    @app.get("/credentials/<cid>/status")
    def status(cid: str) -> str:
        return "ok"

    @app.post("/echo")
    def echo() -> str:
        return str(len(request.get_data()))

    @app.get("/slow")
    def slow() -> str:
        time.sleep(0.5)
        return "done"

    @app.get("/events")
    def events() -> Response:
        def gen():  # type: ignore[no-untyped-def]
            n = 0
            while not stop.wait(0.05):
                yield f"data: {n}\n\n"
                n += 1

        return Response(gen(), mimetype="text/event-stream")

    return app, stop


def test_port_in_use_and_bad_port() -> None:
    sock = bind_listener("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {port} on 127.0.0.1 is already in use"):
            bind_listener("127.0.0.1", port)
    finally:
        sock.close()
    with pytest.raises(CityIdError, match="99999"):
        bind_listener("127.0.0.1", 99999)


def test_limits_stream_access_log_and_graceful_stop(app_and_stop, caplog) -> None:
    app, stop = app_and_stop
    caplog.set_level(logging.INFO, logger="cityid.access")
    server = WsgiServer(
        app,
        bind_listener("127.0.0.1", 0),
        limits=ServingLimits(max_body_bytes=1000),
        access_log=flask_route_of(app),
        on_stop=stop.set,
    ).start()
    try:
        assert requests.get(f"{server.url}/credentials/BS-SECRET-42/status?pin=1234", timeout=5).text == "ok"
        assert requests.post(f"{server.url}/echo", data=b"x" * 999, timeout=5).text == "999"
        assert requests.post(f"{server.url}/echo", data=b"x" * 1001, timeout=5).status_code == 413
        assert "Server" not in requests.get(f"{server.url}/nope", timeout=5).headers
        # The stream arrives message by message (not buffered until the end).
        stream = requests.get(f"{server.url}/events", stream=True, timeout=5)
        lines = stream.iter_lines()
        assert [next(lines), next(lines), next(lines)] == [b"data: 0", b"", b"data: 1"]
        # A request in flight when the stop comes still completes.
        slow: dict[str, str] = {}
        t = threading.Thread(target=lambda: slow.update(r=requests.get(f"{server.url}/slow", timeout=5).text))
        t.start()
        time.sleep(0.2)
    finally:
        server.stop()
    t.join(5)
    assert slow.get("r") == "done"
    assert stop.is_set()  # the app's stop hook ended the stream
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/credentials/x/status", timeout=2)
    log = caplog.text
    assert "GET /credentials/<cid>/status 200" in log and "GET /events 200" in log and "GET - 404" in log
    assert "BS-SECRET-42" not in log and "1234" not in log and "127.0.0.1" not in log.replace(server.url, "")


def test_kiosk_sse_under_waitress_and_graceful_stop() -> None:
    """The kiosk app under the production server: /events streams its first message at once, and stop()
    ends the open stream (the app's shutdown hook) instead of waiting for it."""
    from terminal.config import parse_config
    from terminal.web import create_app
    from terminal.web.server import ServerThread
    from tests.doubles.fake_backends import FakeKioskBackend

    app = create_app(
        parse_config({"terminal": {"mode": "kiosk", "language": "en"}}), kiosk=FakeKioskBackend()
    )
    server = ServerThread(app, "127.0.0.1", 0).start()
    assert server._prod is not None  # waitress, not Werkzeug
    screen = requests.Session()  # the kiosk's own screen: it opens the one-time launch URL first
    screen.get(server.url + app.extensions["cityid.screen"].launch_path(), timeout=5)
    stream = screen.get(f"{server.url}/events", stream=True, timeout=5)
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    first = next(line for line in stream.iter_lines() if line.startswith(b"event:"))
    assert first.startswith(b"event: ")
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 3
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/", timeout=2)


def test_browser_url_file(tmp_path, monkeypatch) -> None:
    from terminal.web_cli import write_browser_url

    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    assert write_browser_url("http://127.0.0.1:8080/") is None
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    path = write_browser_url("http://127.0.0.1:8080/")
    assert path == tmp_path / "browser-url"
    assert path.read_text() == "http://127.0.0.1:8080/\n" and path.stat().st_mode & 0o777 == 0o640
