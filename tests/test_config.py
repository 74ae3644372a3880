"""config.yaml + environment -> Config (pilot.config): values, precedence and one-line refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pilot import config as config_module
from pilot.buildinfo import BuildInfo
from pilot.config import Config, UpgradeConfig, load_config, parse_duration
from pilot.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write_config(home: Path, text: str | bytes) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def refusal(home: Path, text: str | bytes) -> str:
    path = write_config(home, text)
    with pytest.raises(ConfigError) as raised:
        load_config(env={})
    message = raised.value.one_line()
    assert "\n" not in message
    assert str(path) in message
    assert raised.value.exit_code == 4
    return message


def test_defaults_without_a_config_file(isolated_home):
    config = load_config(env={})
    assert config == Config(home=isolated_home, upgrade=UpgradeConfig())
    assert config.upgrade == UpgradeConfig(manifest_url=None, channel="stable", auto_check=True,
                                           check_interval=1800.0, auto_upgrade_on_idle=False, notify_channel="none")
    assert config.config_file == isolated_home / "config.yaml"


def test_an_empty_config_file_means_defaults(isolated_home):
    write_config(isolated_home, "# nothing yet\n")
    assert load_config(env={}).upgrade == UpgradeConfig()


def test_a_full_config_file(isolated_home):
    write_config(isolated_home, """\
upgrade:
  manifest_url: https://releases.example.com/pilot/beta/manifest.json
  channel: beta
  auto_check: false
  check_interval: 2h
  auto_upgrade_on_idle: true
  notify_channel: telegram
""")
    assert load_config(env={}).upgrade == UpgradeConfig(
        manifest_url="https://releases.example.com/pilot/beta/manifest.json", channel="beta", auto_check=False,
        check_interval=7200.0, auto_upgrade_on_idle=True, notify_channel="telegram")


def test_the_environment_overrides_the_file_which_overrides_the_build(isolated_home, monkeypatch):
    built = BuildInfo(version="1.0.0", python_tag="cp311", platform_tag="linux_x86_64", build_id="b",
                      archive=Path("/opt/pilot"), trusted_keys=(), threshold=1, source_commit=None,
                      manifest_url="https://built-in.example/manifest.json")
    monkeypatch.setattr(config_module, "current_build", lambda: built)
    assert load_config(env={}).upgrade.manifest_url == "https://built-in.example/manifest.json"
    write_config(isolated_home, "upgrade:\n  manifest_url: https://from-file.example/manifest.json\n")
    assert load_config(env={}).upgrade.manifest_url == "https://from-file.example/manifest.json"
    env = {"PILOT_MANIFEST_URL": "http://127.0.0.1:8000/stable/manifest.json"}
    assert load_config(env=env).upgrade.manifest_url == "http://127.0.0.1:8000/stable/manifest.json"
    assert load_config(env={"PILOT_MANIFEST_URL": ""}).upgrade.manifest_url == "https://from-file.example/manifest.json"


def test_the_process_environment_is_the_default(monkeypatch):
    monkeypatch.setenv("PILOT_MANIFEST_URL", "http://127.0.0.1:9/manifest.json")
    assert load_config().upgrade.manifest_url == "http://127.0.0.1:9/manifest.json"


def test_with_upgrade_applies_only_the_flags_given():
    config = Config(home=Path("/h"))
    assert config.with_upgrade(channel=None) == config
    assert config.with_upgrade(channel="beta").upgrade == replace(UpgradeConfig(), channel="beta")


@pytest.mark.parametrize("value, seconds", [
    ("30m", 1800), ("2h", 7200), (90, 90), ("90", 90), ("90s", 90), ("1.5h", 5400), (" 1d ", 86400), (0.5, 0.5),
])
def test_durations(value, seconds):
    assert parse_duration(value, "upgrade.check_interval") == seconds


@pytest.mark.parametrize("value", ["0", "0m", -5, 0, "-1h", "1.5.h", "5 minutes", "h", "", True, None, [30]])
def test_bad_durations(value):
    with pytest.raises(ConfigError, match=r"upgrade\.check_interval: .* is not a duration"):
        parse_duration(value, "upgrade.check_interval")


@pytest.mark.parametrize("yaml_value, seconds", [("30m", 1800), ("2h", 7200), ("90", 90), ("'1.5h'", 5400)])
def test_durations_in_the_file(isolated_home, yaml_value, seconds):
    write_config(isolated_home, f"upgrade:\n  check_interval: {yaml_value}\n")
    assert load_config(env={}).upgrade.check_interval == seconds


@pytest.mark.parametrize("text, expected", [
    ("upgrade:\n  channel: [unclosed\n", "not valid YAML at line"),
    ("upgrade: {\n", "not valid YAML"),
    ("upgrade:\n\tchannel: beta\n", "not valid YAML"),
    ("- upgrade\n- channel\n", "expected a mapping at the top level"),
    ("just some words\n", "expected a mapping at the top level"),
    ("upgrade: [1, 2]\n", "'upgrade' must be a mapping"),
    ("upgrade: stable\n", "'upgrade' must be a mapping"),
    ("upgrade:\n  chanel: beta\n", "unknown key upgrade.chanel"),
    ("upgrade:\n  auto_check: 'yes'\n", "upgrade.auto_check: expected true or false"),
    ("upgrade:\n  auto_upgrade_on_idle: 1\n", "upgrade.auto_upgrade_on_idle: expected true or false"),
    ("upgrade:\n  channel: 5\n", "upgrade.channel '5' is not a channel name"),  # numbers are read as text
    ("upgrade:\n  channel: {a: b}\n", "upgrade.channel: expected text"),
    ("upgrad:\n  channel: beta\n", "unknown section 'upgrad'"),
    ("daemon:\n  concurrency: 0\n", "daemon.concurrency: expected a whole number from 1 to 64"),
    ("daemon:\n  drain_timeout: forever\n", "daemon.drain_timeout: 'forever' is not a duration"),
    ("daemon:\n  executor: []\n", "daemon.executor: expected a command line"),
    ("notify:\n  webhook: https://x\n", "unknown key notify.webhook"),
    ("upgrade:\n  channel: '   '\n", "upgrade.channel: expected text"),
    ("upgrade:\n  manifest_url: [a]\n", "upgrade.manifest_url: expected text"),
    ("upgrade:\n  channel: Stable Channel!\n", "upgrade.channel 'Stable Channel!' is not a channel name"),
    ("upgrade:\n  notify_channel: email\n", "upgrade.notify_channel must be one of none, telegram, webhook"),
    ("upgrade:\n  check_interval: soon\n", "upgrade.check_interval: 'soon' is not a duration"),
    ("upgrade:\n  check_interval: 2020-01-01\n", "upgrade.check_interval"),
    # values PyYAML fails to construct with ValueError / RecursionError rather than YAMLError
    ("upgrade:\n  check_interval: 2020-13-45\n", "not valid YAML"),
    ("upgrade:\n  channel: !!int abc\n", "not valid YAML"),
    ("upgrade:\n  check_interval: !!float soon\n", "not valid YAML"),
    ("[" * 1000, "not valid YAML"),
])
def test_a_bad_config_file_is_one_line_naming_the_file_and_key(isolated_home, text, expected):
    assert expected in refusal(isolated_home, text)


def test_a_config_file_that_is_not_utf8(isolated_home):
    assert "not UTF-8 text" in refusal(isolated_home, b"upgrade:\n  channel: b\xe9ta\n")


def test_an_executor_with_unbalanced_quotes_is_a_config_error(isolated_home):
    assert "daemon.executor" in refusal(isolated_home, "daemon:\n  executor: \"claude '-p\"\n")


def test_daemon_and_notify_sections(isolated_home):
    write_config(isolated_home, """\
daemon:
  concurrency: 4
  executor: my-agent --json
  drain_timeout: 30s
notify:
  telegram_chat_id: 42
  webhook_url: https://hooks.example.org/pilot
""")
    config = load_config(env={})
    assert (config.daemon.concurrency, config.daemon.executor, config.daemon.drain_timeout) == (
        4, ("my-agent", "--json"), 30.0)
    assert config.notify.telegram_chat_id == "42"
    assert config.notify.webhook_url == "https://hooks.example.org/pilot"
    assert config.upgrade == UpgradeConfig()


def test_manifest_url_may_be_null(isolated_home):
    write_config(isolated_home, "upgrade:\n  manifest_url: null\n  channel: beta\n")
    assert load_config(env={}).upgrade == replace(UpgradeConfig(), channel="beta")


SECTIONS = ["upgrade", "daemon", "notify", "other"]
KEYS = ["manifest_url", "channel", "auto_check", "check_interval", "auto_upgrade_on_idle", "notify_channel",
        "concurrency", "executor", "drain_timeout", "idle_upgrade_after", "telegram_token", "telegram_chat_id",
        "webhook_url", "other"]
VALUES = ["30m", "1.5h", "0", "-1", "true", "no", "null", "~", "[]", "{}", "beta", "2020-13-45", "!!int x",
          ".inf", ".nan", "1e999", "'quoted'", "&a x", "*a", "!!binary x!", "[[[", "{a: {b: c}}"]


@st.composite
def yamlish(draw) -> str:
    entries = draw(st.lists(st.tuples(st.sampled_from(KEYS), st.one_of(st.sampled_from(VALUES), st.text(max_size=8)))))
    body = "".join(f"  {key}: {value}\n" for key, value in entries)
    head = draw(st.sampled_from(SECTIONS))
    return draw(st.sampled_from([f"{head}:\n", "", f"{head}: ", "- "])) + body


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(), yamlish()))
@example("upgrade:\n  check_interval: 2020-13-45\n")
@example("[" * 1000)
@example("\ud800")
def test_any_text_is_a_config_or_a_config_error(isolated_home, text):
    write_config(isolated_home, text.encode("utf-8", "surrogatepass"))
    try:
        config = load_config(env={})
    except ConfigError as error:
        assert "\n" not in error.one_line()
    else:
        assert isinstance(config, Config)


@pytest.mark.parametrize("value", [".inf", ".nan", "1e999"])
def test_an_infinite_interval_is_refused(isolated_home, value):
    assert "upgrade.check_interval" in refusal(isolated_home, f"upgrade:\n  check_interval: {value}\n")


# --- a private release host: PILOT_UPDATE_TOKEN, upgrade.token_file, upgrade.auth_header -----------------

MANIFEST = "https://releases.example.org/stable/manifest.json"


def token_file(tmp_path: Path, text: str | bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "token"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    path.chmod(mode)
    return path


def auth_refusal(env: dict[str, str], manifest_url: str = MANIFEST) -> ConfigError:
    """release_auth refused in one line with exit 4, the token file's content nowhere in it."""
    with pytest.raises(ConfigError) as raised:
        config_module.release_auth(load_config(env=env), manifest_url, env)
    assert raised.value.exit_code == 4 and "\n" not in raised.value.one_line()
    return raised.value


def test_no_token_means_no_header(isolated_home):
    assert config_module.release_auth(load_config(env={}), MANIFEST, {}) is None


def test_the_token_from_the_environment_is_hidden_in_config(isolated_home):
    reading = config_module.read_config({"PILOT_UPDATE_TOKEN": "s3cret"})
    assert reading.config.upgrade.token == config_module.HIDDEN
    assert reading.sources["upgrade.token"] == "environment (PILOT_UPDATE_TOKEN)"
    assert "s3cret" not in repr(reading)
    auth = config_module.release_auth(reading.config, MANIFEST, {"PILOT_UPDATE_TOKEN": " s3cret\n"})
    assert auth.headers_for("https", "releases.example.org", 443) == {"Authorization": "Bearer s3cret"}


@pytest.mark.parametrize("text", ["tok-123\n", "  tok-123  \n\n", "\ttok-123\r\n", b"tok-123"])
def test_the_token_file_is_read_with_surrounding_whitespace_trimmed(isolated_home, tmp_path, text):
    env = {"PILOT_UPDATE_TOKEN_FILE": str(token_file(tmp_path, text))}
    auth = config_module.release_auth(load_config(env=env), MANIFEST, env)
    assert auth.headers_for("https", "releases.example.org", 443) == {"Authorization": "Bearer tok-123"}


def test_the_token_file_and_header_from_config_yaml(isolated_home, tmp_path):
    path = token_file(tmp_path, "tok-123\n")
    write_config(isolated_home, f"upgrade:\n  token_file: {path}\n  auth_header: X-Cdn-Key\n")
    reading = config_module.read_config({})
    assert (reading.sources["upgrade.token_file"], reading.sources["upgrade.auth_header"]) == ("file", "file")
    auth = config_module.release_auth(reading.config, MANIFEST, {})
    assert auth.headers_for("https", "releases.example.org", 443) == {"X-Cdn-Key": "tok-123"}
    env = {"PILOT_UPDATE_TOKEN": "from-env"}  # the environment wins over config.yaml, as everywhere
    assert config_module.release_auth(load_config(env=env), MANIFEST, env).secrets[-1] == "from-env"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o010])
def test_a_token_file_open_to_group_or_others_is_refused_like_ssh_does(isolated_home, tmp_path, mode):
    path = token_file(tmp_path, "tok-123\n", mode)
    error = auth_refusal({"PILOT_UPDATE_TOKEN_FILE": str(path)})
    assert f"permissions {mode:04o} for the token file {path} are too open" in error.one_line()
    assert f"chmod 600 {path}" in error.one_line() and "tok-123" not in error.one_line()


@pytest.mark.parametrize(("make", "expected"), [
    (lambda tmp: tmp / "missing", "cannot read the token file {path}: No such file or directory"),
    (lambda tmp: tmp, "the token file {path} is not a regular file"),
    (lambda tmp: (os.mkfifo(tmp / "fifo", 0o600), tmp / "fifo")[1], "is not a regular file"),  # and no hang
    (lambda tmp: token_file(tmp, ""), "the token is empty"),
    (lambda tmp: token_file(tmp, " \n\n"), "the token is empty"),
    (lambda tmp: token_file(tmp, "one\ntwo\n"), "a space, a control or a non-ASCII character"),
    (lambda tmp: token_file(tmp, "x" * 8193), "is larger than 8192 bytes"),
    (lambda tmp: token_file(tmp, b"\xff\xfe"), "is not UTF-8 text"),
])
def test_a_token_file_that_cannot_be_used_is_one_line(isolated_home, tmp_path, make, expected):
    path = make(tmp_path)
    error = auth_refusal({"PILOT_UPDATE_TOKEN_FILE": str(path)})
    assert expected.format(path=path) in error.one_line()


def test_an_environment_token_that_cannot_be_sent_is_refused_without_being_shown(isolated_home):
    error = auth_refusal({"PILOT_UPDATE_TOKEN": "abc\r\nX-Evil: 1"})
    assert error.one_line().startswith("PILOT_UPDATE_TOKEN: the token holds a space") and "Evil" not in error.one_line()


@pytest.mark.parametrize(("env", "expected"), [
    ({"PILOT_UPDATE_TOKEN": "a", "PILOT_UPDATE_TOKEN_FILE": "/t"}, "PILOT_UPDATE_TOKEN and PILOT_UPDATE_TOKEN_FILE"),
    ({"PILOT_UPDATE_TOKEN_FILE": "token.txt"}, "PILOT_UPDATE_TOKEN_FILE: 'token.txt' is not an absolute path"),
    ({"PILOT_UPDATE_AUTH_HEADER": "Host"}, "PILOT_UPDATE_AUTH_HEADER: Host is a header Pilot sets itself"),
    ({"PILOT_UPDATE_AUTH_HEADER": "X Key"}, "PILOT_UPDATE_AUTH_HEADER: 'X Key' is not an HTTP header name"),
])
def test_bad_token_settings_in_the_environment_are_config_errors(isolated_home, env, expected):
    with pytest.raises(ConfigError) as raised:
        load_config(env=env)
    assert expected in raised.value.one_line() and raised.value.exit_code == 4


@pytest.mark.parametrize(("text", "expected"), [
    ("upgrade:\n  token: s3cret-value\n", "upgrade.token: a token is never read from config.yaml"),
    ("upgrade:\n  token_file: token.txt\n", "upgrade.token_file: 'token.txt' is not an absolute path"),
    ("upgrade:\n  auth_header: 'Proxy-Authorization'\n", "upgrade.auth_header: Proxy-Authorization is a header"),
])
def test_bad_token_settings_in_config_yaml_are_one_line(isolated_home, text, expected):
    message = refusal(isolated_home, text)
    assert expected in message and "s3cret" not in message


def test_an_offline_manifest_needs_no_header(isolated_home, tmp_path):
    env = {"PILOT_UPDATE_TOKEN": "tok"}
    assert config_module.release_auth(load_config(env=env), str(tmp_path / "manifest.json"), env) is None


def test_config_show_lists_the_token_settings_and_never_the_token(isolated_home, tmp_path):
    path = token_file(tmp_path, "file-s3cret\n")
    write_config(isolated_home, f"upgrade:\n  token_file: {path}\n")
    env = {**os.environ, "PILOT_HOME": str(isolated_home), "PILOT_UPDATE_TOKEN": "env-s3cret",
           "PILOT_UPDATE_AUTH_HEADER": "X-Cdn-Key"}
    shown = subprocess.run([sys.executable, "-m", "pilot", "config", "show", "--json"], capture_output=True, text=True,
                           env=env, cwd=REPO, check=True).stdout
    values = json.loads(shown)["values"]
    assert values["upgrade.token"] == {"value": "(set, hidden)", "source": "environment (PILOT_UPDATE_TOKEN)"}
    assert values["upgrade.token_file"] == {"value": str(path), "source": "file"}
    assert values["upgrade.auth_header"] == {"value": "X-Cdn-Key", "source": "environment (PILOT_UPDATE_AUTH_HEADER)"}
    text = subprocess.run([sys.executable, "-m", "pilot", "config", "show"], capture_output=True, text=True,
                          env=env, cwd=REPO, check=True).stdout
    assert "s3cret" not in shown + text and "(set, hidden)" in text
