"""The published manifest.schema.json (judged by jsonschema) and the client's parser must agree.

Whatever jsonschema refuses, parse_manifest refuses too; a manifest built to the schema is
accepted by both; and no input makes parse_manifest raise anything but ManifestError. The
parser may be stricter than jsonschema (it is on purpose: `1.0` is no integer, `$` does not
match before a trailing newline, dates must exist, versions must be unique), never laxer.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packaging.version import Version

from pilot.errors import ManifestError
from pilot.update.manifest import format_timestamp, parse_manifest

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "manifest.schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
DEFS = SCHEMA["$defs"]

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_published_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_a_package_copy_of_the_schema_is_the_published_one_byte_for_byte():
    """pilot/update/manifest.schema.json is made from the top-level file (build/build.py, setup.py), never kept."""
    packaged = REPO / "pilot" / "update" / "manifest.schema.json"
    if not packaged.exists():
        pytest.skip("this checkout has no package copy of the schema")
    assert packaged.read_bytes() == (REPO / "manifest.schema.json").read_bytes(), (
        f"{packaged.relative_to(REPO)} is stale: copy manifest.schema.json over it (or delete it)")


def test_the_package_copy_of_the_schema_is_not_kept_in_git():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "--", "pilot/update/manifest.schema.json"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
    assert tracked == "", "only the top-level manifest.schema.json is kept; the package copy is made from it"


def encode(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")


def parse_outcome(data: bytes) -> str | None:
    """None when parse_manifest accepts; its message when it refuses. Any other exception fails the test."""
    try:
        parse_manifest(data)
    except ManifestError as error:
        assert "\n" not in error.one_line()
        return error.one_line()
    return None


# --- manifests built to the schema ------------------------------------------------------------


LOWER = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
URL_CHARS = LOWER + LOWER.upper() + DIGITS + "._~:/?#@!$&'()*+,;=%-"


def joined(*parts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(*parts).map("".join)


def numbers() -> st.SearchStrategy[str]:
    """A PEP 440 release number without leading zeros: 0 to 999999999."""
    return st.one_of(st.integers(0, 20), st.integers(0, 999_999_999)).map(str)


names = joined(st.sampled_from(LOWER), st.text(LOWER + DIGITS + "-", max_size=31))
sha256s = st.binary(min_size=32, max_size=32).map(bytes.hex)
urls = joined(st.sampled_from(["http://", "https://"]), st.text(URL_CHARS, min_size=1, max_size=60))
versions = joined(
    st.lists(numbers(), min_size=1, max_size=4).map(".".join),
    st.one_of(st.just(""), joined(st.sampled_from(["a", "b", "rc"]), numbers())),
    st.one_of(st.just(""), numbers().map(".post{}".format)),
    st.one_of(st.just(""), numbers().map(".dev{}".format)),
).filter(lambda v: len(v) <= DEFS["version"]["maxLength"])
counters = st.integers(1, 2**53 - 1)
sizes = st.integers(1, 2**32)
moments = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9000, 1, 1)).map(
    lambda d: d.replace(microsecond=0, tzinfo=UTC))
python_tags = st.text(DIGITS, min_size=1, max_size=2).map("cp3{}".format)
platform_tags = joined(st.sampled_from(LOWER), st.text(LOWER + DIGITS, max_size=15), st.just("_"),
                       st.text(LOWER + DIGITS + "_", min_size=1, max_size=32))


GENERATED = {
    "name": (names, DEFS["name"]),
    "sha256": (sha256s, DEFS["sha256"]),
    "url": (urls, DEFS["url"]),
    "version": (versions, DEFS["version"]),
    "timestamp": (moments.map(format_timestamp), DEFS["timestamp"]),
    "python_tag": (python_tags, DEFS["artifact"]["properties"]["python_tag"]),
    "platform_tag": (platform_tags, DEFS["artifact"]["properties"]["platform_tag"]),
}


@pytest.mark.parametrize("what", sorted(GENERATED))
def test_the_generators_follow_the_schema(what):
    strategy, node = GENERATED[what]

    @settings(max_examples=50, deadline=None)
    @given(strategy)
    def check(value):
        assert list(jsonschema.Draft202012Validator(node).iter_errors(value)) == []

    check()


def with_optional(required: dict, optional: dict) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(required, optional=optional)


delta_indexes = with_optional(
    {"url": urls, "size": sizes, "sha256": sha256s, "chunk_size": st.integers(4096, 16 * 1024 * 1024)}, {})
artifacts = with_optional(
    {"python_tag": python_tags, "platform_tag": platform_tags,
     "url": urls, "size": sizes, "sha256": sha256s},
    {"build_id": sha256s, "delta_index": delta_indexes},
)


@st.composite
def releases(draw, version: str) -> dict:
    required = {
        "version": st.just(version),
        "released_at": moments.map(format_timestamp),
        "artifacts": st.lists(artifacts, min_size=1, max_size=2,
                              unique_by=lambda a: (a["python_tag"], a["platform_tag"])),
    }
    optional = {
        "notes": st.text(max_size=40), "yanked": st.booleans(), "yanked_reason": st.text(max_size=20),
        "rollout_percent": st.integers(0, 100),
    }
    return draw(with_optional(required, optional))


@st.composite
def manifests(draw) -> dict:
    issued = draw(moments)
    lifetime = draw(st.integers(1, 10 * 365 * 86400))
    release_versions = draw(st.lists(versions, max_size=3, unique_by=Version))  # 1.0 and 1.0.0 are one version
    document = {
        "schema_version": 1,
        "product": draw(names),
        "channel": draw(names),
        "serial": draw(counters),
        "issued_at": format_timestamp(issued),
        "expires_at": format_timestamp(issued + timedelta(seconds=lifetime)),
        "releases": [draw(releases(v)) for v in release_versions],
    }
    if draw(st.booleans()):
        document["keyset_version"] = draw(counters)
    if draw(st.booleans()):
        document["min_supported_version"] = draw(versions)
    return dict(draw(st.permutations(list(document.items()))))  # key order must not matter


@SETTINGS
@given(manifests())
def test_a_manifest_built_to_the_schema_is_accepted_by_both(document):
    errors = [e.message for e in VALIDATOR.iter_errors(document)]
    assert errors == []
    assert parse_outcome(encode(document)) is None
    manifest = parse_manifest(encode(document))
    assert manifest.serial == document["serial"]
    assert [str(r.version) for r in manifest.releases] == [str(Version(r["version"])) for r in document["releases"]]


# --- mutations of valid manifests -------------------------------------------------------------

TRICKS = [
    "\uff11",  # FULLWIDTH DIGIT ONE
    "\u0661",  # ARABIC-INDIC DIGIT ONE
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\u200b",  # ZERO WIDTH SPACE
    "\ufeff",  # BYTE ORDER MARK
    "\u0130",  # I WITH DOT ABOVE (lowercases to two characters)
    "\u212a",  # KELVIN SIGN (matches k case-insensitively)
    "\n", "\r", "\t", " ", "\x00", "v", "V", "A", "-", "_", ".", "+", "!", "é", "\U0001f600",
]

GENERIC_INTEGERS = [-1, 0, 2**53, 10**30, -(10**30)]


def schema_node(path: tuple) -> dict | None:
    """The schema (after $ref) that governs the value at `path`, or None where the schema has no place for it."""
    node = SCHEMA
    for step in path:
        node = resolved(node)
        node = node.get("items") if isinstance(step, int) else node.get("properties", {}).get(step)
        if node is None:
            return None
    return resolved(node)


def resolved(node: dict) -> dict:
    while "$ref" in node:
        node = {**{k: v for k, v in node.items() if k != "$ref"}, **DEFS[node["$ref"].removeprefix("#/$defs/")]}
    return node


def integer_boundaries(node: dict | None) -> list[int | float]:
    """Integers just outside the node's range or beside its const, plus a few that are wrong almost anywhere."""
    node = node or {}
    near = [node["minimum"] - 1] if "minimum" in node else []
    near += [node["maximum"] + 1] if "maximum" in node else []
    near += [node["const"] - 1, node["const"] + 1] if isinstance(node.get("const"), int) else []
    return near + GENERIC_INTEGERS + [True, False, float(node.get("minimum", 1))]


wrong_values = st.one_of(
    st.booleans(),
    st.none(),
    st.just(1.0), st.just(0.5), st.just(-0.0), st.just(1e308), st.just(1e400),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(),
    st.sampled_from([0, -1, 2**32, 2**32 + 1, 2**53 - 1, 2**53, 10**30, -(10**30), 101, 4095, 16777217]),
    st.text(max_size=10),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def locations(value: Any, path: tuple = ()) -> list[tuple]:
    """Every path to a value inside the document (the document itself is the empty path)."""
    found = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            found += locations(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += locations(child, (*path, index))
    return found


def at(document: Any, path: tuple) -> Any:
    for step in path:
        document = document[step]
    return document


def replace(document: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    at(document, path[:-1])[path[-1]] = value
    return document


def tricked(draw, text: str) -> str:
    trick = draw(st.sampled_from(TRICKS))
    where = draw(st.sampled_from(["start", "end", "middle", "replace"]))
    if where == "start":
        return trick + text
    if where == "end":
        return text + trick
    index = draw(st.integers(0, len(text)))
    if where == "replace" and text:
        index = min(index, len(text) - 1)
        return text[:index] + trick + text[index + 1:]
    return text[:index] + trick + text[index:]


MUTATIONS = ["drop", "add", "retype", "boundary", "empty", "overfill", "trick", "lengthen"]


@st.composite
def mutated(draw) -> dict:
    """A valid manifest with one to three mutations, most of them aimed by the schema at a boundary."""
    document = copy.deepcopy(draw(manifests()))
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        paths = locations(document)
        by_type: dict[type, list[tuple]] = {dict: [], list: [], str: [], int: []}
        for path in paths:
            by_type.get(type(at(document, path)), []).append(path)  # type(): a bool is no int here
        having = by_type.__getitem__
        kind = draw(st.sampled_from(MUTATIONS))
        if kind == "drop" and having(dict):
            target = at(document, draw(st.sampled_from(having(dict))))
            if target:
                del target[draw(st.sampled_from(sorted(target)))]
        elif kind == "add" and having(dict):
            target = at(document, draw(st.sampled_from(having(dict))))
            name = draw(st.sampled_from(["extra", "Serial", "serial ", "$schema", "", "\u200bserial", "version"]))
            target[name] = draw(wrong_values)
        elif kind == "retype":
            path = draw(st.sampled_from(paths))
            document = replace(document, path, draw(wrong_values))
        elif kind == "boundary" and having(int):
            path = draw(st.sampled_from(having(int)))
            document = replace(document, path, draw(st.sampled_from(integer_boundaries(schema_node(path)))))
        elif kind == "empty" and having(list):
            document = replace(document, draw(st.sampled_from(having(list))), [])
        elif kind == "overfill" and having(list):
            # Past maxItems with copies of the first item (or with junk, for an empty list).
            path = draw(st.sampled_from(having(list)))
            items = at(document, path)
            limit = min((schema_node(path) or {}).get("maxItems", 3), 64)  # 1000 releases: see test_list_limits
            filler = items[0] if items else draw(wrong_values)
            document = replace(document, path, [copy.deepcopy(filler) for _ in range(limit + 1)])
        elif kind == "trick" and having(str):
            path = draw(st.sampled_from(having(str)))
            document = replace(document, path, tricked(draw, at(document, path)))
        elif kind == "lengthen" and having(str):
            # Past the field's maxLength with a character its pattern allows (where it has one).
            path = draw(st.sampled_from(having(str)))
            text = at(document, path)
            limit = (schema_node(path) or {}).get("maxLength", 64)
            filler = draw(st.sampled_from(["a", "1", "é"]))
            document = replace(document, path, text + filler * max(1, limit + 1 - len(text)))
    return document


@SETTINGS
@given(mutated())
def test_whatever_jsonschema_refuses_the_parser_refuses(document):
    schema_errors = list(VALIDATOR.iter_errors(document))
    outcome = parse_outcome(encode(document))
    if schema_errors:
        assert outcome is not None, f"parse_manifest accepted what jsonschema refuses: {schema_errors[0].message}"


FULL = {
    "schema_version": 1, "product": "pilot", "channel": "stable", "serial": 9, "keyset_version": 2,
    "min_supported_version": "1.0", "issued_at": "2030-01-01T00:00:00Z", "expires_at": "2030-02-01T00:00:00Z",
    "releases": [
        {"version": "1.1.0rc1", "released_at": "2029-12-31T23:59:59Z", "notes": "n", "yanked": True,
         "yanked_reason": "r", "rollout_percent": 50,
         "artifacts": [{"python_tag": "cp311", "platform_tag": "linux_x86_64", "url": "https://x.test/a.pyz",
                        "size": 10, "sha256": "a" * 64, "build_id": "b" * 64,
                        "delta_index": {"url": "https://x.test/a.idx", "size": 3, "sha256": "c" * 64,
                                        "chunk_size": 65536}}]},
        {"version": "1.0", "released_at": "2029-12-01T00:00:00Z",
         "artifacts": [{"python_tag": "cp312", "platform_tag": "macos_arm64", "url": "http://x.test/b.pyz",
                        "size": 1, "sha256": "d" * 64}]},
    ],
}
RETYPES = [None, True, False, 1, 1.0, 1.5, "1", "", [], {}, [1], {"a": 1}]


def single_mutations(document: dict):
    """Every single mutation of one kind or another at every place in `document`."""
    for path in locations(document):
        value, node = at(document, path), schema_node(path) or {}
        for replacement in RETYPES:
            yield path, replacement
        if type(value) is int:
            for replacement in integer_boundaries(node):
                yield path, replacement
        if isinstance(value, str):
            for trick in TRICKS:
                yield path, trick + value
                yield path, value + trick
                yield path, value[:1] + trick + value[1:]
            yield path, value + "a" * (node.get("maxLength", 64) + 1 - len(value))
        if isinstance(value, dict):
            for name in sorted(value):
                yield path, {k: v for k, v in value.items() if k != name}
            yield path, {**value, "extra": 1}
        if isinstance(value, list) and value:
            yield path, []
            yield path, [copy.deepcopy(value[0]) for _ in range(node.get("maxItems", 3) + 1)]


def test_every_single_mutation_of_a_full_manifest_that_jsonschema_refuses_the_parser_refuses():
    assert list(VALIDATOR.iter_errors(FULL)) == [] and parse_outcome(encode(FULL)) is None
    checked = refused = 0
    for path, replacement in single_mutations(FULL):
        document = replace(copy.deepcopy(FULL), path, copy.deepcopy(replacement))
        schema_errors = list(VALIDATOR.iter_errors(document))
        outcome = parse_outcome(encode(document))
        checked += 1
        if schema_errors:
            refused += 1
            assert outcome is not None, f"{path} = {replacement!r:.80}: jsonschema says {schema_errors[0].message:.200}"
    assert refused > 0.8 * checked > 1000  # the mutations are real, not accidents that stay valid


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("serial",), True),
        (("serial",), 10**30),
        (("serial",), 2**53),
        (("releases", 0, "rollout_percent"), False),
        (("releases", 0, "artifacts", 0, "size"), 2**32 + 1),
        (("releases", 0, "version"), "\uff11.0"),
        (("releases", 0, "version"), "1.0\u200b"),
        (("releases", 0, "artifacts", 0, "python_tag"), "cp3\u0661\u0661"),
        (("releases", 0, "artifacts", 0, "platform_tag"), "linux_x86_64\u202e"),
        (("schema_version",), 2),
        (("serial",), 0),
        (("releases", 0, "artifacts"), []),
        (("releases", 0, "rollout_percent"), -1),
        (("releases", 0, "version"), "100000000.100000000.100000000.100000000rc100000000.post100000000.dev1"),
        (("releases", 0, "artifacts", 0, "url"), "https://x.test/" + "a" * 2034),
        (("releases", 0, "yanked_reason"), "x" * 1001),
        (("releases", 0, "notes"), "x" * 65537),
    ],
)
def test_known_tricks_are_refused_by_the_parser(path, value):
    document = small_manifest()
    assert parse_outcome(encode(document)) is None
    replace(document, path, value)
    assert list(VALIDATOR.iter_errors(document)) != []
    assert parse_outcome(encode(document)) is not None


def small_manifest() -> dict:
    return {
        "schema_version": 1, "product": "pilot", "channel": "stable", "serial": 1,
        "issued_at": "2030-01-01T00:00:00Z", "expires_at": "2030-02-01T00:00:00Z",
        "releases": [{"version": "1.0", "released_at": "2030-01-01T00:00:00Z", "rollout_percent": 5, "artifacts": [
            {"python_tag": "cp311", "platform_tag": "linux_x86_64", "url": "https://x.test/a.pyz", "size": 1,
             "sha256": "0" * 64}]}],
    }


@pytest.mark.parametrize(
    "path",
    [("product",), ("channel",), ("issued_at",), ("releases", 0, "version"), ("releases", 0, "artifacts", 0, "sha256"),
     ("releases", 0, "artifacts", 0, "python_tag"), ("releases", 0, "artifacts", 0, "url")],
)
def test_a_trailing_newline_is_refused_although_a_python_regex_dollar_would_allow_it(path):
    document = small_manifest()
    replace(document, path, at(document, path) + "\n")
    assert parse_outcome(encode(document)) is not None


def artifact_for(python_tag: str) -> dict:
    return {"python_tag": python_tag, "platform_tag": "linux_x86_64", "url": "https://x.test/a.pyz", "size": 1,
            "sha256": "0" * 64}


@pytest.mark.parametrize(
    ("field", "limit", "make"),
    [
        ("artifacts", 64, lambda i: artifact_for(f"cp3{i}")),
        ("releases", 1000, lambda i: {"version": f"1.{i}", "released_at": "2030-01-01T00:00:00Z",
                                      "artifacts": [artifact_for("cp311")]}),
    ],
)
def test_list_limits_are_enforced_by_both(field, limit, make):
    document = small_manifest()
    holder = document["releases"][0] if field == "artifacts" else document
    holder[field] = [make(i) for i in range(limit)]
    assert list(VALIDATOR.iter_errors(document)) == []
    assert parse_outcome(encode(document)) is None
    holder[field].append(make(limit))
    assert list(VALIDATOR.iter_errors(document)) != []
    assert parse_outcome(encode(document)) is not None


# --- anything at all --------------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=2000))
def test_any_bytes_are_a_manifest_or_a_manifest_error(data):
    parse_outcome(data)


@SETTINGS
@given(st.text(max_size=500))
def test_any_text_is_a_manifest_or_a_manifest_error(text):
    parse_outcome(text.encode("utf-8", "surrogatepass"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=30,
)


@SETTINGS
@given(st.one_of(json_values, st.builds(lambda d, extra: {**d, **extra}, manifests(),
                                        st.dictionaries(st.sampled_from(["releases", "serial", "issued_at"]),
                                                        json_values, max_size=2))))
def test_any_json_value_is_a_manifest_or_a_manifest_error(value):
    data = json.dumps(value).encode()  # NaN and Infinity included: json.dumps writes them
    if parse_outcome(data) is None:
        assert list(VALIDATOR.iter_errors(value)) == []
