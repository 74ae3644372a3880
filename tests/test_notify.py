"""Notifier against a fake Telegram Bot API and a fake webhook receiver on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trustme

from pilot.buildinfo import current_version
from pilot.config import Config, NotifyConfig, UpgradeConfig
from pilot.errors import ConfigError
from pilot.notify import TELEGRAM_MAX_TEXT, Notifier
from tests.support.proxy import FakeProxy

TOKEN = "123456:ABC-def_ghi"
CHAT = "-100424242"
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def clean_proxy_env(monkeypatch) -> None:
    """The developer's own proxy settings must not leak into these tests."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: object


@dataclass
class FakeServer:
    """Answers each POST with the next queued (status, body); the last answer repeats."""

    url: str
    received: list[Received] = field(default_factory=list)
    answers: list[tuple[int, object]] = field(default_factory=list)
    hang: threading.Event | None = None


def _handler(fake: FakeServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # keep test output quiet
            pass

        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw
            fake.received.append(Received("POST", self.path, dict(self.headers), body))
            if fake.hang is not None:
                fake.hang.wait(5)
                return
            status, answer = fake.answers.pop(0) if len(fake.answers) > 1 else fake.answers[0]
            data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    fake = FakeServer(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    if fake.hang is not None:
        fake.hang.set()
    server.shutdown()
    server.server_close()


def telegram_ok(text: str = "x") -> tuple[int, dict]:
    """What the real Bot API answers to sendMessage."""
    return 200, {"ok": True, "result": {"message_id": 17, "date": 1700000000, "text": text,
                                        "chat": {"id": int(CHAT), "type": "supergroup", "title": "ops"}}}


def config(channel: str, tmp_path: Path, **notify: str | None) -> Config:
    return Config(home=tmp_path, upgrade=UpgradeConfig(notify_channel=channel), notify=NotifyConfig(**notify))


def telegram(fake: FakeServer, tmp_path: Path, **kwargs) -> Notifier:
    cfg = config("telegram", tmp_path, telegram_token=TOKEN, telegram_chat_id=CHAT, telegram_api=fake.url)
    return Notifier(cfg, **kwargs)


def webhook(fake: FakeServer, tmp_path: Path, **kwargs) -> Notifier:
    return Notifier(config("webhook", tmp_path, webhook_url=f"{fake.url}/hooks/s3cret"), **kwargs)


# ---------------------------------------------------------------------------- telegram


def test_telegram_posts_send_message_in_the_bot_api_shape(fake_server, tmp_path):
    fake_server.answers = [telegram_ok()]
    assert telegram(fake_server, tmp_path).send("update_available", "Pilot 1.3.0 is available") is None

    [request] = fake_server.received
    assert request.path == f"/bot{TOKEN}/sendMessage"
    assert request.headers["Content-Type"] == "application/json"
    assert request.body == {"chat_id": CHAT, "text": "Pilot 1.3.0 is available"}


def test_telegram_text_is_cut_to_the_api_limit(fake_server, tmp_path):
    fake_server.answers = [telegram_ok()]
    assert telegram(fake_server, tmp_path).send("upgraded", "x" * 10_000) is None
    assert fake_server.received[0].body["text"] == "x" * TELEGRAM_MAX_TEXT


def test_telegram_refusal_is_reported_without_the_token(fake_server, tmp_path, caplog):
    fake_server.answers = [(400, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"})]
    with caplog.at_level(logging.WARNING, logger="pilot.notify"):
        error = telegram(fake_server, tmp_path).send("rolled_back", "rolled back to 1.2.0")
    assert error == "telegram refused the notification (HTTP 400): Bad Request: chat not found"
    assert [r.getMessage() for r in caplog.records] == [error]


def test_telegram_200_without_ok_true_is_a_failure(fake_server, tmp_path):
    fake_server.answers = [(200, {"ok": False})]
    assert telegram(fake_server, tmp_path).send("upgraded", "hi").startswith("telegram refused")
    fake_server.answers = [(200, b"<html>captive portal</html>")]
    error = telegram(fake_server, tmp_path).send("upgraded", "hi")
    assert error == 'telegram refused the notification (HTTP 200): the answer was not {"ok": true}'


def test_server_error_is_reported_not_raised_and_not_retried(fake_server, tmp_path):
    fake_server.answers = [(500, b"Internal Server Error")]
    error = telegram(fake_server, tmp_path).send("upgraded", "hi")
    assert error is not None and "HTTP 500" in error and TOKEN not in error and "\n" not in error
    assert len(fake_server.received) == 1  # the message may have gone out: no duplicate


def test_overload_is_retried(fake_server, tmp_path):
    fake_server.answers = [(503, b"busy"), (429, {"ok": False, "parameters": {"retry_after": 300}}), telegram_ok()]
    started = time.monotonic()
    assert telegram(fake_server, tmp_path).send("upgraded", "hi") is None
    assert len(fake_server.received) == 3
    assert time.monotonic() - started < 5  # Retry-After of minutes is not honoured by a notification


def test_unreachable_server_is_one_line_without_the_token(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = config("telegram", tmp_path, telegram_token=TOKEN, telegram_chat_id=CHAT,
                 telegram_api=f"http://127.0.0.1:{port}")
    error = Notifier(cfg).send("upgraded", "hi")
    assert error == f"telegram notification failed: could not reach http://127.0.0.1:{port}: Connection refused"


def test_a_server_that_never_answers_times_out(fake_server, tmp_path):
    fake_server.hang = threading.Event()
    started = time.monotonic()
    error = telegram(fake_server, tmp_path, timeout=0.5).send("upgraded", "hi")
    assert error == f"telegram notification failed: could not reach {fake_server.url}: no answer within 0.5 s"
    assert time.monotonic() - started < 3
    assert len(fake_server.received) == 1  # a read timeout is not retried: the message may have arrived


# ---------------------------------------------------------------------------- webhook


def test_webhook_posts_event_text_and_version(fake_server, tmp_path):
    fake_server.answers = [(204, b"")]
    notifier = webhook(fake_server, tmp_path)
    assert notifier.send("update_available", "Pilot 1.3.0 is available", new_version="1.3.0") is None

    [request] = fake_server.received
    assert request.path == "/hooks/s3cret"
    body = request.body
    assert {k: body[k] for k in ("event", "text", "version", "new_version")} == {
        "event": "update_available", "text": "Pilot 1.3.0 is available", "version": current_version(),
        "new_version": "1.3.0"}
    assert body["host"] == socket.gethostname() and body["time"].endswith("+00:00")


def test_webhook_details_cannot_override_the_standard_fields(fake_server, tmp_path):
    fake_server.answers = [(200, b"{}")]
    webhook(fake_server, tmp_path).send("upgraded", "ok", version="9.9.9", host="spoofed")
    body = fake_server.received[0].body
    assert (body["version"], body["host"]) == (current_version(), socket.gethostname())


def test_webhook_500_reports_failure_without_its_secret_path(fake_server, tmp_path):
    fake_server.answers = [(500, b"oops")]
    error = webhook(fake_server, tmp_path).send("rolled_back", "rolled back")
    assert error == f"webhook answered HTTP 500 for {fake_server.url}"
    assert len(fake_server.received) == 1


def test_webhook_redirect_is_not_followed(fake_server, tmp_path):
    fake_server.answers = [(302, b"")]
    assert webhook(fake_server, tmp_path).send("upgraded", "hi") == f"webhook answered HTTP 302 for {fake_server.url}"


# ---------------------------------------------------------------------------- none, misuse, configuration


def test_channel_none_sends_nothing(tmp_path):
    notifier = Notifier(config("none", tmp_path))  # no token, no URL: fine
    assert not notifier.enabled
    assert notifier.send("upgraded", "hi") is None


def test_unknown_event_is_reported_not_sent(fake_server, tmp_path):
    fake_server.answers = [telegram_ok()]
    error = telegram(fake_server, tmp_path).send("exploded", "hi")
    assert error == "unknown notification event 'exploded' (known: update_available, upgraded, rolled_back)"
    assert fake_server.received == []


@pytest.mark.parametrize(("channel", "notify", "message"), [
    ("telegram", {"telegram_chat_id": CHAT},
     "notify.telegram_token is required when upgrade.notify_channel is telegram"),
    ("telegram", {"telegram_token": TOKEN},
     "notify.telegram_chat_id is required when upgrade.notify_channel is telegram"),
    ("telegram", {"telegram_token": " ", "telegram_chat_id": CHAT}, "notify.telegram_token is required"),
    ("telegram", {"telegram_token": "12/../x", "telegram_chat_id": CHAT}, "is not a bot token"),
    ("telegram", {"telegram_token": TOKEN, "telegram_chat_id": CHAT, "telegram_api": "http://api.telegram.org"},
     "notify.telegram_api: plain http:// to api.telegram.org is not allowed"),
    ("webhook", {}, "notify.webhook_url is required when upgrade.notify_channel is webhook"),
    ("webhook", {"webhook_url": "http://hooks.example.org/x"}, "plain http:// to hooks.example.org is not allowed"),
    ("webhook", {"webhook_url": "ftp://hooks.example.org/x"}, "notify.webhook_url: ftp:// URLs are not allowed"),
    ("webhook", {"webhook_url": "hooks.example.org/x"}, "notify.webhook_url: URLs without a scheme are not allowed"),
    ("webhook", {"webhook_url": "https:///x"}, "notify.webhook_url: https:// is not a URL with a host"),
    ("webhook", {"webhook_url": "https://hooks.example.org:99999/x"}, "is not a URL"),
])
def test_incomplete_configuration_is_one_clear_config_error(tmp_path, channel, notify, message):
    with pytest.raises(ConfigError) as caught:
        Notifier(config(channel, tmp_path, **notify))
    assert message in caught.value.one_line()
    assert "\n" not in caught.value.one_line()


def test_https_and_loopback_urls_are_accepted(tmp_path):
    Notifier(config("webhook", tmp_path, webhook_url="https://hooks.example.org/pilot"))
    Notifier(config("webhook", tmp_path, webhook_url="http://localhost:8080/pilot"))
    Notifier(config("webhook", tmp_path, webhook_url="http://[::1]:8080/pilot"))
    Notifier(config("telegram", tmp_path, telegram_token=TOKEN, telegram_chat_id=CHAT))  # the default API


def test_a_malformed_url_is_reported_without_its_secret_path(tmp_path):
    with pytest.raises(ConfigError) as caught:
        Notifier(config("webhook", tmp_path, webhook_url="https://hook:pw@hooks.example.org:99999/hooks/s3cret"))
    assert caught.value.one_line() == "notify.webhook_url: https://hooks.example.org:99999 is not a URL"


# ---------------------------------------------------------------------------- credentials and proxies


def closed_port() -> int:
    with socket.socket() as sock:  # a port that was free a moment ago: connection refused
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SECRETS = (TOKEN, "ABC-def", urllib.parse.quote(TOKEN, safe=""), "s3cret", "hook-pass", "pr0xy-pass", "sig=abc123")


def telegram_answer(description: str):
    return lambda fake: [(401, {"ok": False, "error_code": 401, "description": description.format(url=fake.url)})]


@pytest.mark.parametrize("scenario", [
    # Telegram's own text quoting the token where a 200-character cut would leave half of it
    "telegram: " + "x" * 183 + TOKEN + " is unknown",
    # ... URL-quoted, inside a URL, after a newline
    "telegram: POST {url}/bot" + urllib.parse.quote(TOKEN, safe="") + "/sendMessage: Unauthorized",
    "telegram: Unauthorized\nbot " + TOKEN,
    "webhook: HTTP 500",
    "telegram via proxy: connection refused",
    "webhook via proxy: connection refused",
])
def test_no_credential_appears_in_any_message_of_a_failing_delivery(fake_server, tmp_path, monkeypatch, caplog,
                                                                    scenario):
    channel, _, detail = scenario.partition(": ")
    fake_server.answers = [(500, b"oops")]
    if channel == "telegram":
        fake_server.answers = telegram_answer(detail)(fake_server)
    if "via proxy" in channel:
        monkeypatch.setenv("HTTPS_PROXY", f"http://pilot:pr0xy-pass@127.0.0.1:{closed_port()}")
        api, hook = "https://api.telegram.invalid", "https://hook:hook-pass@hooks.invalid/hooks/s3cret?sig=abc123"
    else:
        api, hook = fake_server.url, fake_server.url.replace("//", "//hook:hook-pass@") + "/hooks/s3cret?sig=abc123"
    if channel.startswith("telegram"):
        cfg = config("telegram", tmp_path, telegram_token=TOKEN, telegram_chat_id=CHAT, telegram_api=api)
    else:
        cfg = config("webhook", tmp_path, webhook_url=hook)
    with caplog.at_level(logging.DEBUG):
        error = Notifier(cfg, retries=1).send("upgraded", "hi")  # a retry makes urllib3 log a warning
    assert error is not None and "\n" not in error
    assert [r.getMessage() for r in caplog.records if r.name == "pilot.notify"] == [error]
    shown = "\n".join([error, caplog.text])
    assert [secret for secret in SECRETS if secret in shown] == []
    if "via proxy" in channel:  # urllib3's own retry warning quoted the path, and was redacted
        assert "Retrying" in caplog.text and "[redacted]" in caplog.text


def test_an_unusable_proxy_is_a_config_error_without_its_password(tmp_path, monkeypatch):
    monkeypatch.setenv("ALL_PROXY", "socks5://pilot:pr0xy-pass@127.0.0.1:1080")
    with pytest.raises(ConfigError) as caught:
        Notifier(config("webhook", tmp_path, webhook_url="https://hooks.example.org/hooks/s3cret"))
    assert caught.value.one_line() == ("proxy socks5://127.0.0.1:1080 cannot be used for notifications "
                                       "(use an http:// or https:// proxy, or name the host in NO_PROXY)")
    monkeypatch.setenv("NO_PROXY", "hooks.example.org")
    Notifier(config("webhook", tmp_path, webhook_url="https://hooks.example.org/hooks/s3cret"))


@pytest.fixture
def tls_hook(tmp_path, monkeypatch) -> Iterator[FakeServer]:
    """A webhook receiver over TLS for hooks.pilot.test, trusted through SSL_CERT_FILE."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    fake = FakeServer(url="", answers=[(204, b"")])
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("hooks.pilot.test").configure_cert(ctx)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    fake.url = f"https://hooks.pilot.test:{server.server_address[1]}"  # resolvable only by the proxy
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def auth_proxy() -> Iterator[FakeProxy]:
    with FakeProxy(credentials="pilot:pr0xy-pass") as proxy:
        yield proxy


def test_a_proxy_password_is_sent_as_a_header_and_never_shown(tls_hook, auth_proxy, tmp_path, monkeypatch, caplog):
    port = auth_proxy.server_address[1]
    monkeypatch.setenv("HTTPS_PROXY", f"http://pilot:pr0xy-pass@127.0.0.1:{port}")
    cfg = config("webhook", tmp_path, webhook_url=f"{tls_hook.url}/hooks/s3cret")
    assert Notifier(cfg, retries=0).send("upgraded", "through the proxy") is None
    assert [r.path for r in tls_hook.received] == ["/hooks/s3cret"]
    assert auth_proxy.heads[0].startswith(f"CONNECT hooks.pilot.test:{tls_hook.url.rpartition(':')[2]} ")

    monkeypatch.setenv("HTTPS_PROXY", f"http://pilot:wr0ng-pass@127.0.0.1:{port}")
    with caplog.at_level(logging.WARNING, logger="pilot.notify"):
        error = Notifier(cfg, retries=0).send("upgraded", "refused by the proxy")
    assert error is not None and error.startswith(f"webhook notification failed: could not reach {tls_hook.url}: ")
    assert len(tls_hook.received) == 1
    for shown in (error, caplog.text):
        assert "wr0ng" not in shown and "s3cret" not in shown and "pilot:" not in shown


# ---------------------------------------------------------------------------- the log


def test_a_delivered_notification_is_logged_in_one_line_without_secrets(fake_server, tmp_path, caplog):
    fake_server.answers = [telegram_ok()]
    with caplog.at_level(logging.INFO, logger="pilot.notify"):
        assert telegram(fake_server, tmp_path).send("upgraded", "Pilot upgraded") is None
    assert [r.getMessage() for r in caplog.records] == ["telegram notification sent: upgraded"]
    fake_server.answers = [(200, {})]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pilot.notify"):
        assert webhook(fake_server, tmp_path).send("rolled_back", "Pilot rolled back") is None
    assert [r.getMessage() for r in caplog.records] == ["webhook notification sent: rolled_back"]


def test_the_notifier_names_its_secrets_and_pilot_log_never_shows_them(fake_server, tmp_path):
    from pilot.daemon.logs import configure_logging, keep_out_of_logs, log_path

    notifier = webhook(fake_server, tmp_path)
    assert "/hooks/s3cret" in notifier.secrets
    assert Notifier(config("none", tmp_path)).secrets == ()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(tmp_path, to_stderr=False)
        keep_out_of_logs(notifier.secrets)
        logging.getLogger("pilot").warning("posting to %s/hooks/s3cret via http://user:pw@proxy:3128/ failed",
                                           fake_server.url)
        for handler in root.handlers:
            handler.flush()
        text = log_path(tmp_path).read_text()
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert "s3cret" not in text and "user:pw" not in text
    assert f"posting to {fake_server.url}[redacted] via http://proxy:3128/ failed" in text
