"""pilot.net: where requests may go, through which proxy, and how URLs and untrusted text are shown."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest

from pilot.net import (
    HTTPS_ONLY_HINT,
    REDACTED,
    ReleaseAuth,
    header_name_problem,
    is_loopback,
    one_line,
    origin,
    proxy_for,
    proxy_headers,
    redact,
    scheme_problem,
    show_url,
    strip_credentials,
    token_problem,
    url_secrets,
)

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "REQUEST_METHOD")


@pytest.fixture(autouse=True)
def clean_proxy_env(monkeypatch) -> None:
    """The developer's own proxy settings must not leak into these tests."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


# ---------------------------------------------------------------------------- loopback and the scheme rule


@pytest.mark.parametrize("host", [
    "localhost", "LocalHost", "127.0.0.1", "127.255.255.254", "::1", "[::1]", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1",
])
def test_loopback_hosts(host) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", [
    "", "example.org", "10.0.0.1", "0.0.0.0", "::", "::2", "[::1", "fe80::1",
    # spellings that may well resolve to loopback but are not taken on trust
    "localhost.", "api.localhost", "127.1", "2130706433", "0x7f.0.0.1", "127.0.0.1.nip.io",
])
def test_everything_else_is_not_loopback(host) -> None:
    assert not is_loopback(host)


@pytest.mark.parametrize(("scheme", "host"), [
    ("https", "example.org"), ("HTTPS", "example.org"), ("https", "127.0.0.1"),
    ("http", "127.0.0.1"), ("http", "localhost"), ("http", "::1"), ("HTTP", "LOCALHOST"),
])
def test_https_anywhere_and_plain_http_to_loopback_are_allowed(scheme, host) -> None:
    assert scheme_problem(scheme, host) is None


@pytest.mark.parametrize(("scheme", "host", "problem"), [
    ("http", "example.org", "plain http:// to example.org is not allowed"),
    ("HTTP", "updates.example.org", "plain http:// to updates.example.org is not allowed"),
    ("http", "10.0.0.1", "plain http:// to 10.0.0.1 is not allowed"),
    ("http", "localhost.", "plain http:// to localhost. is not allowed"),
    ("ftp", "127.0.0.1", "ftp:// URLs are not allowed"),
    ("file", "", "file:// URLs are not allowed"),
    ("ws", "example.org", "ws:// URLs are not allowed"),
    ("git+https", "example.org", "git+https:// URLs are not allowed"),
    ("javascript", "", "javascript:// URLs are not allowed"),
    ("", "example.org", "URLs without a scheme are not allowed"),
])
def test_everything_else_is_refused_with_a_reason(scheme, host, problem) -> None:
    assert scheme_problem(scheme, host) == problem
    assert "https://" in HTTPS_ONLY_HINT


def test_the_refusal_of_a_hostile_host_is_one_line() -> None:
    problem = scheme_problem("http", "evil\x1b[2J\nexample.org")
    assert problem == "plain http:// to evil\\x1b[2J\\nexample.org is not allowed"


# ---------------------------------------------------------------------------- proxies


@pytest.mark.parametrize(("variable", "scheme", "expected"), [
    ("HTTPS_PROXY", "https", "http://proxy.corp:3128"),
    ("https_proxy", "https", "http://proxy.corp:3128"),
    ("HTTPS_PROXY", "http", None),  # HTTPS_PROXY is for https only
    ("HTTP_PROXY", "http", "http://proxy.corp:3128"),
    ("ALL_PROXY", "https", "http://proxy.corp:3128"),
    ("all_proxy", "http", "http://proxy.corp:3128"),
])
def test_proxy_comes_from_the_environment(monkeypatch, variable, scheme, expected) -> None:
    monkeypatch.setenv(variable, "http://proxy.corp:3128")
    assert proxy_for(scheme, "updates.example.org") == expected


def test_no_proxy_variables_means_direct() -> None:
    assert proxy_for("https", "updates.example.org") is None


def test_the_scheme_specific_proxy_wins_over_all_proxy(monkeypatch) -> None:
    monkeypatch.setenv("ALL_PROXY", "http://all.corp:1")
    monkeypatch.setenv("HTTPS_PROXY", "http://https.corp:2")
    assert proxy_for("https", "updates.example.org") == "http://https.corp:2"


def test_a_proxy_without_a_scheme_is_http(monkeypatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "user:pw@proxy.corp:3128")
    assert proxy_for("https", "updates.example.org") == "http://user:pw@proxy.corp:3128"


@pytest.mark.parametrize(("no_proxy", "host", "direct"), [
    ("example.org", "example.org", True),
    ("example.org", "updates.example.org", True),
    (".example.org", "updates.example.org", True),
    ("other.org, example.org", "updates.example.org", True),
    ("EXAMPLE.ORG", "updates.example.org", True),
    ("*", "anything.example", True),
    ("example.org", "notexample.org", False),
    ("example.org", "example.org.evil.test", False),
    ("", "updates.example.org", False),
])
def test_no_proxy_says_direct(monkeypatch, no_proxy, host, direct) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    assert (proxy_for("https", host) is None) is direct


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.8.9.10"])
def test_loopback_is_always_direct(monkeypatch, host) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://proxy.corp:3128")
    assert proxy_for("http", host) is None
    assert proxy_for("https", host) is None


def test_proxy_credentials_become_a_header() -> None:
    header = proxy_headers("http://pilot:p%40ss%3Aword@proxy.corp:3128")
    assert header == {"Proxy-Authorization": "Basic " + base64.b64encode(b"pilot:p@ss:word").decode()}
    assert proxy_headers("pilot:pw@proxy.corp:3128") == {
        "Proxy-Authorization": "Basic " + base64.b64encode(b"pilot:pw").decode()}
    assert proxy_headers("http://proxy.corp:3128") == {}
    assert proxy_headers("http://@proxy.corp:3128") == {}


# ---------------------------------------------------------------------------- credentials


@pytest.mark.parametrize(("url", "expected"), [
    ("https://user:pass@updates.example.org/stable/m.json?x=1#f", "https://updates.example.org/stable/m.json?x=1#f"),
    ("https://user@updates.example.org/m.json", "https://updates.example.org/m.json"),
    ("https://user:pa@ss@updates.example.org:8443/m", "https://updates.example.org:8443/m"),  # the LAST @ ends it
    ("https://user:pass%40x@updates.example.org/", "https://updates.example.org/"),
    ("http://user:pass@[::1]:8080/m", "http://[::1]:8080/m"),
    ("//user:pass@updates.example.org/m", "//updates.example.org/m"),
    ("HTTPS://USER:PASS@updates.example.org", "HTTPS://updates.example.org"),
    # proxies, as HTTPS_PROXY/ALL_PROXY hold them
    ("http://pilot:pass@proxy.corp:3128", "http://proxy.corp:3128"),
    ("http://pilot:pass@proxy.corp:3128/", "http://proxy.corp:3128/"),
    ("socks5h://pilot:pass@proxy.corp:1080", "socks5h://proxy.corp:1080"),
    ("pilot:pass@proxy.corp:3128", "proxy.corp:3128"),
    # malformed URLs (urllib.parse would raise) and URLs urllib.parse reads past tabs, newlines and blanks
    ("https://user:pass@[::1/m", "https://[::1/m"),
    ("https://user:pass@updates.example.org:99999/m", "https://updates.example.org:99999/m"),
    ("ht\ttps://user:pass@updates.example.org/m", "ht\ttps://updates.example.org/m"),
    ("https:/\n/user:pass@updates.example.org/m", "https:/\n/updates.example.org/m"),
    ("https://us\ner:pass@updates.example.org/m", "https://updates.example.org/m"),
    (" https://user:pass@updates.example.org/m", " https://updates.example.org/m"),
])
def test_credentials_are_stripped_from_every_url_shape(url, expected) -> None:
    assert strip_credentials(url) == expected
    assert "pass" not in strip_credentials(url).lower()


@pytest.mark.parametrize("url", [
    "https://updates.example.org/m.json",
    "https://updates.example.org/releases/user@host.pyz",  # an @ in the path is not userinfo
    "https://updates.example.org/?next=a:b@c",
    "https://updates.example.org#a@b",
    "",
])
def test_urls_without_credentials_are_unchanged(url) -> None:
    assert strip_credentials(url) == url


@pytest.mark.parametrize(("url", "expected"), [
    ("https://api.telegram.org/bot123456:ABC-def/sendMessage", "https://api.telegram.org"),
    ("https://user:pass@hooks.example.org:8443/hooks/s3cret?sig=x#y", "https://hooks.example.org:8443"),
    ("http://[::1]:8080/pilot", "http://[::1]:8080"),
    ("https://hooks.example.org:99999/s3cret", "https://hooks.example.org:99999"),  # malformed: no raise
    ("hooks.example.org/s3cret", "hooks.example.org"),
    ("https://hooks.example.org", "https://hooks.example.org"),
])
def test_origin_keeps_only_scheme_host_and_port(url, expected) -> None:
    assert origin(url) == expected


def test_show_url_is_credential_free_and_one_line() -> None:
    assert show_url("https://u:secret@updates.example.org/a\nb\x1b[0m") == "https://updates.example.org/a\\nb\\x1b[0m"
    assert show_url("https://updates.example.org/" + "x" * 500).endswith("x...")
    assert len(show_url("https://updates.example.org/" + "x" * 500)) == 200


def test_url_secrets_are_every_part_that_may_be_a_credential() -> None:
    url = "https://hook:p%40ss@hooks.example.org/hooks/s3cret?sig=abc123#frag"
    secrets = url_secrets(url)
    for part in ("hook:p%40ss", "p%40ss", "p@ss", "/hooks/s3cret", "sig=abc123", "frag"):
        assert part in secrets
    assert "hooks.example.org" not in secrets and "https://hooks.example.org" not in secrets
    assert url_secrets("http://pilot:pw@proxy.corp:3128", path=False) == ("pilot:pw", "pw")
    assert url_secrets("http://proxy.corp:3128", path=False) == ()
    assert url_secrets("https://hooks.example.org/") == ()  # a path of "/" is no secret worth garbling for


def test_redact_removes_secrets_longest_first_and_every_userinfo() -> None:
    text = ("POST /bot123:ABC/sendMessage failed via http://pilot:hunter2@proxy.corp:3128 "
            "(see https://x:y@hooks.example.org/a) token 123:ABC")
    shown = redact(text, ["123:ABC", "/bot123:ABC/sendMessage", "", "/"])
    assert shown == (f"POST {REDACTED} failed via http://proxy.corp:3128 "
                     f"(see https://hooks.example.org/a) token {REDACTED}")
    assert redact("nothing to hide: a@b, /x/y") == "nothing to hide: a@b, /x/y"


def test_redacting_before_cutting_leaves_no_half_secret() -> None:
    token = "123456:ABC-def_ghi"
    text = "a" * 185 + token + "b" * 100  # one_line alone would cut inside the token
    assert "123456:ABC" in one_line(text)
    shown = one_line(redact(text, [token]))
    assert "ABC" not in shown and shown.endswith("...") and len(shown) == 200


# ---------------------------------------------------------------------------- one_line


@pytest.mark.parametrize(("text", "expected"), [
    ("HTTP 503: try later", "HTTP 503: try later"),
    ("first\nsecond\r\nthird", "first\\nsecond\\r\\nthird"),
    ("a\tb", "a\\tb"),
    ("\x1b[31mred\x1b[0m \x1b]0;title\x07", "\\x1b[31mred\\x1b[0m \\x1b]0;title\\x07"),
    ("nul\x00 del\x7f c1\x85", "nul\\x00 del\\x7f c1\\x85"),
    ("line\u2028separator\u2029", "line\\u2028separator\\u2029"),
    ("evil\u202egnp.exe", "evil\\u202egnp.exe"),  # a bidi override cannot reverse what follows
    ("lone \udcff surrogate", "lone \\udcff surrogate"),
    ("Ünïcødé ok, 日本語, ✓", "Ünïcødé ok, 日本語, ✓"),
    ("a backslash \\n stays", "a backslash \\n stays"),
])
def test_one_line_escapes_every_non_printable_character(text, expected) -> None:
    shown = one_line(text)
    assert shown == expected
    assert shown.isprintable()
    shown.encode("utf-8")  # no lone surrogate left to break a log handler


def test_one_line_cuts_long_text_with_an_ellipsis() -> None:
    assert one_line("x" * 200) == "x" * 200
    assert one_line("x" * 201) == "x" * 197 + "..."
    assert one_line("x" * 10_000_000) == "x" * 197 + "..."
    assert one_line("abcdefghijkl", limit=10) == "abcdefg..."
    assert one_line("abcdefghij", limit=10) == "abcdefghij"


def test_one_line_counts_escapes_and_never_cuts_one_in_half() -> None:
    assert one_line("\n" * 5, limit=10) == "\\n\\n\\n\\n\\n"
    assert one_line("\n" * 6, limit=10) == "\\n\\n\\n..."
    shown = one_line("x" * 195 + "\x1b" * 10)
    assert shown == "x" * 195 + "..." and len(shown) <= 200
    shown = one_line("\n" * 1_000_000)
    assert shown == "\\n" * 98 + "..." and "\n" not in shown


# ---------------------------------------------------------------------------- a private release host


@pytest.mark.parametrize(("manifest_url", "scheme", "host", "port"), [
    ("https://releases.example.org/stable/manifest.json", "https", "releases.example.org", 443),
    ("https://releases.example.org/stable/manifest.json", "HTTPS", "Releases.Example.ORG", None),
    ("https://releases.example.org:443/m.json", "https", "releases.example.org", 443),
    ("http://127.0.0.1:8000/stable/manifest.json", "http", "127.0.0.1", 8000),
    ("http://[::1]:8000/m.json", "http", "::1", 8000),
])
def test_the_token_goes_to_the_manifest_urls_scheme_host_and_port(manifest_url, scheme, host, port) -> None:
    auth = ReleaseAuth(manifest_url, "tok")
    assert auth.headers_for(scheme, host, port) == {"Authorization": "Bearer tok"}


@pytest.mark.parametrize(("scheme", "host", "port"), [
    ("https", "releases.example.org", 8443),  # another port
    ("http", "releases.example.org", 443),  # another scheme on the same port
    ("https", "cdn.example.org", 443),  # another host
    ("https", "example.org", 443),  # a parent domain
    ("https", "releases.example.org.evil.test", 443),
])
def test_the_token_goes_nowhere_else(scheme, host, port) -> None:
    assert ReleaseAuth("https://releases.example.org/stable/manifest.json", "tok").headers_for(scheme, host, port) == {}


def test_a_custom_header_carries_the_bare_token() -> None:
    auth = ReleaseAuth("https://r.example.org/m.json", "tok", "X-Cdn-Key")
    assert auth.headers_for("https", "r.example.org", 443) == {"X-Cdn-Key": "tok"}
    assert ReleaseAuth("https://r.example.org/m.json", "tok", "authorization").headers_for(
        "https", "r.example.org", 443) == {"authorization": "Bearer tok"}


def test_the_token_is_in_no_repr_and_its_secrets_are_both_forms() -> None:
    auth = ReleaseAuth("https://r.example.org/m.json", "s3cret-token")
    assert "s3cret" not in repr(auth) and REDACTED in repr(auth) and "https://r.example.org:443" in repr(auth)
    assert set(auth.secrets) == {"Bearer s3cret-token", "s3cret-token"}
    assert redact("Authorization: Bearer s3cret-token", auth.secrets) == f"Authorization: {REDACTED}"


@pytest.mark.parametrize(("token", "problem"), [
    ("", "empty"),
    ("two words", "a space, a control or a non-ASCII character"),
    ("line\r\nX-Injected: 1", "control"),
    ("tab\there", "control"),
    ("caf\u00e9", "non-ASCII"),
    ("x" * 4097, "longer than 4096"),
])
def test_a_token_that_could_not_be_sent_as_it_is_is_refused(token, problem) -> None:
    assert problem in (token_problem(token) or "")
    with pytest.raises(ValueError):
        ReleaseAuth("https://r.example.org/m.json", token)


def test_a_token_of_visible_ascii_is_fine() -> None:
    assert token_problem("ghp_AbC.123-_~+/=") is None and token_problem("x" * 4096) is None


@pytest.mark.parametrize(("name", "problem"), [
    ("", "is not an HTTP header name"),
    ("X Token", "is not an HTTP header name"),
    ("X-Token:", "is not an HTTP header name"),
    ("X-Token\r\nEvil", "is not an HTTP header name"),
    ("Host", "a header Pilot sets itself"),
    ("proxy-authorization", "a header Pilot sets itself"),  # would go to the proxy, not the release host
    ("If-None-Match", "a header Pilot sets itself"),
    ("Range", "a header Pilot sets itself"),
])
def test_a_header_that_cannot_carry_the_token_is_refused(name, problem) -> None:
    assert problem in (header_name_problem(name) or "")
    assert "\n" not in (header_name_problem(name) or "")


@pytest.mark.parametrize("name", ["Authorization", "X-Pilot-Token", "CF-Access-Token", "x_api_key"])
def test_header_names_that_can_carry_the_token(name) -> None:
    assert header_name_problem(name) is None


# ---------------------------------------------------------------------------- import cost


def test_importing_pilot_net_stays_cheap() -> None:
    code = "import sys, pilot.net; print(sorted(m for m in ('urllib3', 'urllib.request', 'ssl') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
