"""The one place for Pilot's network policy: which URLs may be reached, through which proxy,
how a URL is shown without its credentials, and how untrusted text becomes one safe line.

Every outgoing request (the updater's fetcher, the notifier) follows these rules:

* https to any host; plain http only to this machine (`is_loopback`), see `scheme_problem`;
* the proxy comes from HTTPS_PROXY/HTTP_PROXY/ALL_PROXY unless NO_PROXY says direct, and loopback
  is always direct (`proxy_for`); proxy credentials travel in a header, never in the URL given to
  the HTTP library (`proxy_headers`, `strip_credentials`);
* no credential (userinfo, proxy password, a token in a path) is ever printed or logged
  (`strip_credentials`, `origin`, `redact`, and `redact_logs` for urllib3's own log records),
  and text from a server or a config file is made printable and single-line before it reaches
  a terminal or a log (`one_line`);
* a private release host's token (`ReleaseAuth`) goes only to the scheme, host and port of the
  configured manifest URL: never to another port or host, whatever a redirect or a manifest says.

Standard library only, and cheap to import: urllib3 is never imported here.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import urllib.parse
from collections.abc import Iterable

__all__ = [
    "AUTH_HEADER",
    "AUTH_HEADER_ENV",
    "HTTPS_ONLY_HINT",
    "REDACTED",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "TOKEN_HINT",
    "ReleaseAuth",
    "header_name_problem",
    "is_loopback",
    "one_line",
    "origin",
    "proxy_for",
    "proxy_headers",
    "redact",
    "redact_logs",
    "scheme_problem",
    "show_url",
    "strip_credentials",
    "token_problem",
    "url_secrets",
]

HTTPS_ONLY_HINT = "use https://; plain http is only allowed to this machine"
REDACTED = "[redacted]"
MIN_SECRET = 2  # shorter "secrets" (a path of "/") would only garble messages

# A private release host's credentials: the token itself, or a file of mode 600 holding it (pilot.config
# reads them; never the manifest, which the server writes). Sent as "Authorization: Bearer <token>", or as
# the bare token in the header AUTH_HEADER_ENV names (a CDN's own header).
TOKEN_ENV = "PILOT_UPDATE_TOKEN"
TOKEN_FILE_ENV = "PILOT_UPDATE_TOKEN_FILE"
AUTH_HEADER_ENV = "PILOT_UPDATE_AUTH_HEADER"
AUTH_HEADER = "Authorization"
TOKEN_HINT = f"set {TOKEN_ENV}, or {TOKEN_FILE_ENV} (a file of mode 600 holding the token)"
MAX_TOKEN = 4096
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")  # an HTTP field name (RFC 9110 token)
# Fields the fetcher writes itself or that steer the connection or a proxy: a token must not replace them.
_RESERVED_HEADERS = frozenset({
    "accept-encoding", "connection", "content-length", "cookie", "host", "if-none-match", "keep-alive",
    "proxy-authorization", "range", "te", "trailer", "transfer-encoding", "upgrade", "user-agent",
})

# Leading blanks and control characters, an optional scheme and "//", then the userinfo: everything up to
# the authority's LAST "@". urllib.parse ignores tabs and newlines anywhere in a URL (as WHATWG does), so
# they are allowed inside the scheme and the "//" too: "ht\ttps://u:p@h" cannot hide its password.
_LEAD = r"[\x00-\x20]*(?:[A-Za-z][A-Za-z0-9+.\-\t\r\n]*:[\t\r\n]*)?"
_OWN_USERINFO = re.compile(rf"^({_LEAD}/[\t\r\n]*/)?[^/?#]*@")
_AUTHORITY = re.compile(rf"^{_LEAD}(?:/[\t\r\n]*/)?[^/?#]*")
# Any URL inside free text, e.g. an exception message: its userinfo up to the last "@" of its authority.
_EMBEDDED_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#]*@")


# ---------------------------------------------------------------------------- where requests may go


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (also bracketed or IPv4-mapped): the only hosts
    plain http may reach. Other spellings that resolve to loopback ("127.1", "localhost.") are not."""
    host = host.lower()
    if host == "localhost":
        return True
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def scheme_problem(scheme: str, host: str) -> str | None:
    """Why scheme://host must not be reached, or None when it may: https to any host, plain http
    only to loopback, nothing else. The answer is one line; callers raise their own error with it
    (and `HTTPS_ONLY_HINT`)."""
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        return f"{one_line(scheme, 40)}:// URLs are not allowed" if scheme else "URLs without a scheme are not allowed"
    if scheme == "http" and not is_loopback(host):
        return f"plain http:// to {one_line(host)} is not allowed"
    return None


def proxy_for(scheme: str, host: str) -> str | None:
    """The proxy URL for scheme://host from HTTPS_PROXY/HTTP_PROXY/ALL_PROXY (either case), or None
    for a direct connection: always for loopback, and for hosts NO_PROXY names. A proxy given
    without a scheme ("proxy:3128") is http://. The URL may hold credentials: show it with `show_url`."""
    if is_loopback(host):
        return None
    import urllib.request  # not at import time: it pulls in http.client, email and ssl

    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme.lower()) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def proxy_headers(proxy: str) -> dict[str, str]:
    """The Proxy-Authorization header for a proxy URL's user:password, or {} when it has none.

    Give the HTTP library `strip_credentials(proxy)` and these headers, so that the password is
    in no URL the library could put into an error message."""
    match = _OWN_USERINFO.match(proxy)
    userinfo = urllib.parse.unquote(match.group(0)[len(match.group(1) or ""):-1]) if match else ""
    if not userinfo:
        return {}
    try:
        raw = userinfo.encode("latin-1")  # what urllib3's make_headers sends
    except UnicodeEncodeError:
        raw = userinfo.encode("utf-8")
    return {"Proxy-Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}


# ---------------------------------------------------------------------------- a private release host


def header_name_problem(name: str) -> str | None:
    """Why `name` cannot carry the release host's token, or None when it can."""
    if not _HEADER_NAME.fullmatch(name):
        return f"{one_line(name, 64)!r} is not an HTTP header name"
    if name.lower() in _RESERVED_HEADERS:
        return f"{name} is a header Pilot sets itself; name another one"
    return None


def token_problem(token: str) -> str | None:
    """Why `token` (already stripped) cannot be sent, or None. Only visible ASCII: a newline, a control
    character or a space inside could end the header line or split it. The token is never quoted."""
    if not token:
        return "the token is empty"
    if len(token) > MAX_TOKEN:
        return f"the token is longer than {MAX_TOKEN} characters"
    if not all("!" <= ch <= "~" for ch in token):
        return "the token holds a space, a control or a non-ASCII character"
    return None


def _endpoint(scheme: str, host: str, port: int | None) -> tuple[str, str, int]:
    scheme = scheme.lower()
    return scheme, host.lower().strip("[]"), port or (443 if scheme == "https" else 80)


class ReleaseAuth:
    """The header that carries a private release host's token, bound to one scheme://host:port: the
    manifest URL's, under which the client accepts every file it fetches. The token is in no repr."""

    __slots__ = ("_token", "endpoint", "header")

    def __init__(self, manifest_url: str, token: str, header: str = AUTH_HEADER) -> None:
        problem = header_name_problem(header) or token_problem(token)
        if problem is not None:
            raise ValueError(problem)
        parts = urllib.parse.urlsplit(manifest_url)
        self.endpoint = _endpoint(parts.scheme, parts.hostname or "", parts.port)
        self.header = header
        self._token = token

    @property
    def _value(self) -> str:
        """What the header says: "Bearer <token>" in Authorization, the bare token in a CDN's own header."""
        return f"Bearer {self._token}" if self.header.lower() == AUTH_HEADER.lower() else self._token

    def headers_for(self, scheme: str, host: str, port: int | None) -> dict[str, str]:
        """{header: value} for a request to the release host itself, else {}: another port, host or scheme
        (a redirect, an artifact elsewhere) never sees it."""
        return {self.header: self._value} if _endpoint(scheme, host, port) == self.endpoint else {}

    @property
    def secrets(self) -> tuple[str, ...]:
        """What `redact` must remove wherever it might show up: the header's value and the bare token, also
        percent-encoded (a hostile release host may echo it into a redirect's URL)."""
        return tuple(dict.fromkeys((self._value, self._token, urllib.parse.quote(self._token, safe=""))))

    def __repr__(self) -> str:
        scheme, host, port = self.endpoint
        return f"ReleaseAuth({self.header} for {scheme}://{host}:{port}: {REDACTED})"


# ---------------------------------------------------------------------------- showing URLs and text


def strip_credentials(url: str) -> str:
    """The URL without its user:password@, in any shape ("https://u:p@h/x", "//u:p@h", "u:p@proxy:3128",
    a password with "@" in it), malformed or not; never raises. The path and query are kept."""
    return _OWN_USERINFO.sub(lambda m: m.group(1) or "", url, count=1)


def origin(url: str) -> str:
    """scheme://host[:port] only: no credentials, and no path, query or fragment, which may hold a
    token (a Telegram bot token lives in the path). Never raises."""
    match = _AUTHORITY.match(strip_credentials(url))
    return match.group(0).strip("\x00 ") if match else ""


def one_line(text: str, limit: int = 200) -> str:
    """Untrusted text (a server's answer, an exception, a config value) made safe for a one-line
    message: every non-printable character (newline, tab, ANSI escape, bidi control, lone surrogate)
    written as its Python escape, and the result cut to `limit` characters ending in "..."."""
    out: list[str] = []
    length = 0
    cut = False
    for ch in text[: limit + 1]:  # an escape is never shorter than its character: the rest cannot fit
        piece = ch if ch.isprintable() else ascii(ch)[1:-1]
        if length + len(piece) > limit:
            cut = True
            break
        out.append(piece)
        length += len(piece)
    if not cut and len(text) <= limit:
        return "".join(out)
    while out and length > max(limit - 3, 0):  # whole escapes only: never leave half of "\x1b"
        length -= len(out.pop())
    return "".join(out) + "..."


def show_url(url: str, limit: int = 200) -> str:
    """A URL fit for a message: without credentials, on one line."""
    return one_line(strip_credentials(url), limit)


def url_secrets(url: str, *, path: bool = True) -> tuple[str, ...]:
    """The parts of a URL that may be credentials, as written and percent-decoded: the userinfo and
    its password and, unless `path` is False (a proxy), everything after the host: path, query and fragment,
    together and each alone. Feed them to `redact`."""
    found: list[str] = []
    match = _OWN_USERINFO.match(url)
    if match is not None:
        userinfo = match.group(0)[len(match.group(1) or ""):-1]
        found += [userinfo, userinfo.partition(":")[2]]
    if path:
        rest = url[len(_AUTHORITY.match(url).group(0)):]  # type: ignore[union-attr]  # always matches
        found += [rest, *re.split(r"[?#]", rest)]
    found += [urllib.parse.unquote(part) for part in found]
    return tuple(dict.fromkeys(part for part in found if len(part) >= MIN_SECRET))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every secret (longest first) replaced by "[redacted]" and the userinfo of every URL
    in it removed. Redact before `one_line`, so that a cut can never leave half a secret behind."""
    for secret in sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return _EMBEDDED_USERINFO.sub(r"\1", text)


# urllib3's own loggers: its warnings ("Retrying ... after connection broken by ...: /bot<token>/sendMessage")
# and debug lines quote request paths. A logger's filters see only the records logged through it, hence each.
_URLLIB3_LOGGERS = ("urllib3.connectionpool", "urllib3.poolmanager", "urllib3.connection", "urllib3.response",
                    "urllib3.util.retry")


class _LogRedactor:
    """A logging filter (any object with `filter(record)` will do) that redacts records in place."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()

    def filter(self, record) -> bool:  # logging.LogRecord; logging is not imported here for it
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's to report, not ours
            return True
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


_log_redactor = _LogRedactor()


def redact_logs(secrets: Iterable[str]) -> None:
    """Keep these secrets, and the userinfo of any URL, out of urllib3's own log records from now on."""
    import logging

    _log_redactor.secrets.update(s for s in secrets if len(s) >= MIN_SECRET)
    for name in _URLLIB3_LOGGERS:
        logger = logging.getLogger(name)
        if _log_redactor not in logger.filters:
            logger.addFilter(_log_redactor)
