"""Tell the user about updates outside the terminal: a Telegram message or a JSON webhook.

    upgrade:
      notify_channel: telegram       # none, telegram, webhook
    notify:
      telegram_token: "123:abc"
      telegram_chat_id: "42"
      webhook_url: https://hooks.example.org/pilot

Configuration mistakes (a missing token, chat id or URL, plain http to another machine, a proxy
urllib3 cannot use) are a `ConfigError` when the `Notifier` is built, so the daemon refuses to
start with one clear line. Delivery failures are not errors: a notification is a courtesy, so
`send` logs one line and returns it instead of raising; a delivered one is logged too
("telegram notification sent: upgraded"). URL and proxy policy and redaction are
`pilot.net`'s: no message ever shows the bot token, the webhook's path or a proxy password.
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.parse
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pilot.buildinfo import current_version
from pilot.config import Config
from pilot.errors import ConfigError
from pilot.net import (
    HTTPS_ONLY_HINT,
    one_line,
    origin,
    proxy_for,
    proxy_headers,
    redact,
    redact_logs,
    scheme_problem,
    strip_credentials,
    url_secrets,
)

if TYPE_CHECKING:
    import urllib3

__all__ = ["EVENTS", "TELEGRAM_MAX_TEXT", "Notifier"]

log = logging.getLogger(__name__)

EVENTS = ("update_available", "upgraded", "rolled_back")
TELEGRAM_MAX_TEXT = 4096  # the Bot API's limit for sendMessage text
TIMEOUT_SECONDS = 10.0
RETRIES = 2
_MAX_MESSAGE = 1000  # a whole failure line; each untrusted piece of it is cut at 200 characters


class Notifier:
    """Sends update events to the channel chosen by `upgrade.notify_channel`."""

    def __init__(self, config: Config, *, timeout: float = TIMEOUT_SECONDS, retries: int = RETRIES) -> None:
        self.channel = config.upgrade.notify_channel
        self._timeout = timeout
        notify = config.notify
        self._url = ""
        self._chat_id = ""
        self._pool: urllib3.PoolManager | None = None
        self._secrets: tuple[str, ...] = ()  # never logged: the bot token, the webhook's path, proxy credentials
        if self.channel == "none":
            return
        if self.channel == "telegram":
            token = _required(notify.telegram_token, "notify.telegram_token", self.channel)
            self._chat_id = _required(notify.telegram_chat_id, "notify.telegram_chat_id", self.channel)
            if any(ch in token for ch in "/?#%") or any(ch.isspace() for ch in token):
                raise ConfigError("notify.telegram_token is not a bot token like 123456:ABC-DEF",
                                  hint="copy it from @BotFather")
            api = _checked_url(notify.telegram_api, "notify.telegram_api").rstrip("/")
            self._url = f"{api}/bot{urllib.parse.quote(token, safe=':')}/sendMessage"
            self._secrets = (token, urllib.parse.quote(token, safe=""), *url_secrets(self._url))
        elif self.channel == "webhook":
            url = _required(notify.webhook_url, "notify.webhook_url", self.channel)
            self._url = _checked_url(url, "notify.webhook_url")
            self._secrets = url_secrets(self._url)
        else:
            raise ConfigError(f"upgrade.notify_channel {self.channel!r} is not one of none, telegram, webhook")
        parts = urllib.parse.urlsplit(self._url)
        proxy = proxy_for(parts.scheme, parts.hostname or "")
        if proxy is not None:
            self._secrets += url_secrets(proxy, path=False)
        redact_logs(self._secrets)  # urllib3's retry warnings quote the request path, i.e. the bot token
        self._pool = _pool_for(proxy, timeout, retries)

    @property
    def enabled(self) -> bool:
        return self.channel != "none"

    @property
    def secrets(self) -> tuple[str, ...]:
        """What no log line may show (the bot token, the webhook's path, proxy credentials): for the log's redactor."""
        return self._secrets

    def send(self, event: str, text: str, **details: str) -> str | None:
        """Deliver one notification. None when it was delivered (or the channel is "none"),
        otherwise the one-line reason it was not, which is also logged. Never raises.

        `details` (e.g. new_version="1.3.0") are extra fields of the webhook's JSON body.
        """
        if self._pool is None:
            return None
        try:
            if event not in EVENTS:
                return self._failed(f"unknown notification event {event!r} (known: {', '.join(EVENTS)})")
            failure = self._telegram(text) if self.channel == "telegram" else self._webhook(event, text, details)
            if failure is None:
                log.info("%s notification sent: %s", self.channel, event)
            return failure
        except Exception as exc:  # a notification must never take the daemon or an upgrade down
            return self._failed(f"{self.channel} notification failed: {self._clean(str(exc) or type(exc).__name__)}")

    # -- channels

    def _telegram(self, text: str) -> str | None:
        body = {"chat_id": self._chat_id, "text": text[:TELEGRAM_MAX_TEXT]}
        status, data = self._post(body)
        if status is None:
            return self._failed(f"telegram notification failed: {data}")
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        if isinstance(answer, dict) and answer.get("ok") is True:
            return None
        why = answer.get("description") if isinstance(answer, dict) else None
        why = self._clean(str(why)) if why else "the answer was not {\"ok\": true}"
        return self._failed(f"telegram refused the notification (HTTP {status}): {why}")

    def _webhook(self, event: str, text: str, details: dict[str, str]) -> str | None:
        body = {
            **{str(k): v for k, v in details.items()},
            "event": event,
            "text": text,
            "version": current_version(),
            "host": socket.gethostname(),
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        status, data = self._post(body)
        if status is None:
            return self._failed(f"webhook notification failed: {data}")
        if 200 <= status < 300:
            return None
        return self._failed(f"webhook answered HTTP {status} for {origin(self._url)}")

    # -- plumbing

    def _post(self, body: dict) -> tuple[int | None, str]:
        """(status, body text), or (None, reason) if no answer came."""
        from urllib3.exceptions import HTTPError

        pool = self._pool
        if pool is None:
            return None, "notifications are off"
        try:
            response = pool.request(
                "POST", self._url, body=json.dumps(body).encode("utf-8"),
                headers={"Content-Type": "application/json", "User-Agent": f"pilot/{current_version()}"},
                preload_content=False,
            )
        except HTTPError as exc:
            return None, f"could not reach {origin(self._url)}: {self._clean(_reason(exc, self._timeout))}"
        try:
            data = response.read(64 * 1024, decode_content=True)
        except HTTPError as exc:
            return None, f"no answer from {origin(self._url)}: {self._clean(_reason(exc, self._timeout))}"
        finally:
            response.release_conn()
        return response.status, data.decode("utf-8", "replace")

    def _clean(self, text: str) -> str:
        """Untrusted text for a message: redacted first, so that the cut cannot leave half a secret."""
        return one_line(redact(text, self._secrets))

    def _failed(self, message: str) -> str:
        message = one_line(redact(message, self._secrets), _MAX_MESSAGE)
        log.warning("%s", message)
        return message


def _required(value: str | None, key: str, channel: str) -> str:
    if value is None or not str(value).strip():
        raise ConfigError(f"{key} is required when upgrade.notify_channel is {channel}",
                          hint="set it in config.yaml, or set upgrade.notify_channel: none")
    return str(value).strip()


def _checked_url(url: str, key: str) -> str:
    """The URL if pilot.net's rule allows it (https anywhere, plain http only to loopback), else a ConfigError
    that shows no more of it than scheme, host and port: the path may be the secret."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigError(f"{key}: {one_line(origin(url))} is not a URL") from None
    problem = scheme_problem(parts.scheme, host)
    if problem is not None:
        raise ConfigError(f"{key}: {problem}", hint=HTTPS_ONLY_HINT)
    if not host:
        raise ConfigError(f"{key}: {one_line(origin(url))} is not a URL with a host")
    return url


def _pool_for(proxy: str | None, timeout: float, retries: int) -> urllib3.PoolManager:
    import urllib3

    retry = urllib3.Retry(
        # Retry what surely did not deliver (no connection, 429/502/503/504), never a read timeout:
        # the server may have sent the message already, and a duplicate is worse than a miss.
        total=retries, connect=retries, status=retries, read=0, other=0, redirect=0,
        backoff_factor=0.5, raise_on_redirect=False, raise_on_status=False,
        status_forcelist=(429, 502, 503, 504), allowed_methods=frozenset({"POST"}),
        respect_retry_after_header=False,  # Telegram's 429 may ask for minutes; a notification cannot wait
    )
    options = {"timeout": urllib3.Timeout(total=timeout), "retries": retry}
    if proxy is None:
        return urllib3.PoolManager(**options)
    try:
        # The password goes in a header, not in a URL urllib3 might quote in an error.
        return urllib3.ProxyManager(strip_credentials(proxy), proxy_headers=proxy_headers(proxy), **options)
    except (urllib3.exceptions.HTTPError, ValueError):
        raise ConfigError(f"proxy {one_line(origin(proxy))} cannot be used for notifications",
                          hint="use an http:// or https:// proxy, or name the host in NO_PROXY") from None


def _reason(exc: BaseException, timeout: float) -> str:
    """The innermost explanation urllib3 wrapped, e.g. 'Connection refused' or 'timed out'."""
    from urllib3.exceptions import NewConnectionError
    from urllib3.exceptions import TimeoutError as Urllib3Timeout

    seen: set[int] = set()
    current: BaseException | None = exc
    best = None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # NewConnectionError (refused, DNS) subclasses urllib3's TimeoutError for old callers' sake.
        if isinstance(current, (Urllib3Timeout, TimeoutError)) and not isinstance(current, NewConnectionError):
            return f"no answer within {timeout:g} s"
        if isinstance(current, OSError) and current.strerror:
            best = current.strerror
        current = getattr(current, "reason", None) or current.__cause__ or current.__context__
    return best or type(exc).__name__
