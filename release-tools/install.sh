#!/bin/sh
# Install Pilot with one command:
#
#     curl -fsSL @SITE@/install.sh | sh
#     curl -fsSL @SITE@/install.sh | sh -s -- --dir ~/bin
#
# It finds a CPython @SPAN@, downloads the signed @CHANNEL@ manifest and its signatures, checks
# the signatures with openssl against the release keys written below (and says so plainly when
# openssl cannot), picks the newest release for this interpreter and platform, downloads its
# archive, checks its size and sha256 against the signed manifest, and runs `pilot install`
# from it, which copies it to ~/.local/bin/pilot (or --dir). Nothing is installed unless every
# check passes. Environment: PILOT_PYTHON (the interpreter to use), PILOT_INSTALL_DIR (--dir).
#
# Written by `release.py publish` from release-tools/install.sh in Pilot's repository.

set -u

SITE='@SITE@'
CHANNEL='@CHANNEL@'
VERSIONS='@VERSIONS@'  # the CPythons Pilot runs on, newest first
SPAN='@SPAN@'
THRESHOLD=@THRESHOLD@  # signatures by the keys below that the manifest needs
KEYS='@KEYS@'  # one per line: keyid, then the key as base64 DER (SubjectPublicKeyInfo)

say() { printf 'install.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

usage() {
    printf '%s\n' "usage: install.sh [--dir DIR]" \
        "Install Pilot from $SITE ($CHANNEL) into DIR (default ~/.local/bin)."
}

fetch() {  # URL FILE
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --retry 2 -o "$2" "$1" </dev/null
    elif command -v wget >/dev/null 2>&1; then
        wget -q -O "$2" "$1" </dev/null
    else
        die "neither curl nor wget is installed: install one and run this again"
    fi
}

supported() {  # PYTHON: whether it is a CPython Pilot runs on
    "$1" -c "import sys; sys.exit(0 if sys.implementation.name == 'cpython' and
'%d.%d' % sys.version_info[:2] in '$VERSIONS'.split() else 1)" </dev/null 2>/dev/null
}

find_python() {
    if [ -n "${PILOT_PYTHON:-}" ]; then
        command -v "$PILOT_PYTHON" >/dev/null 2>&1 || die "PILOT_PYTHON=$PILOT_PYTHON: no such interpreter"
        supported "$PILOT_PYTHON" || die "PILOT_PYTHON=$PILOT_PYTHON is not a CPython $SPAN"
        command -v "$PILOT_PYTHON"
        return 0
    fi
    for version in '' $VERSIONS; do
        candidate=python${version:-3}
        if command -v "$candidate" >/dev/null 2>&1 && supported "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

platform() {
    case $(uname -s) in
        Linux) os=linux ;;
        Darwin) os=macos ;;
        *) die "Pilot is not published for $(uname -s)" ;;
    esac
    case $(uname -m) in
        x86_64 | amd64) arch=x86_64 ;;
        aarch64 | arm64) if [ "$os" = macos ]; then arch=arm64; else arch=aarch64; fi ;;
        *) die "Pilot is not published for $(uname -m)" ;;
    esac
    printf '%s_%s\n' "$os" "$arch"
}

# The manifest's signatures, checked with openssl: 0 when THRESHOLD keys signed it, 1 when not,
# 2 when this openssl cannot check Ed25519 signatures.
check_signatures() {  # DIR (holding manifest.json, manifest.json.sig)
    command -v openssl >/dev/null 2>&1 || return 2
    openssl pkeyutl -help 2>&1 | grep -q -- -rawin || return 2
    valid=0
    for keyid in $(printf '%s\n' "$KEYS" | cut -d ' ' -f 1); do
        der=$(printf '%s\n' "$KEYS" | grep "^$keyid " | cut -d ' ' -f 2)
        printf -- '-----BEGIN PUBLIC KEY-----\n%s\n-----END PUBLIC KEY-----\n' "$der" >"$1/key.pem"
        openssl pkey -pubin -in "$1/key.pem" -noout </dev/null 2>/dev/null || return 2
        sig=$("$python" -c "import json, sys
for s in json.load(open(sys.argv[1]))['signatures']:
    print(s['sig']) if s['keyid'] == sys.argv[2] else None" "$1/manifest.json.sig" "$keyid" </dev/null 2>/dev/null | head -n 1)
        [ -n "$sig" ] || continue
        printf '%s' "$sig" | openssl base64 -d -A >"$1/sig.bin" 2>/dev/null || continue
        if openssl pkeyutl -verify -pubin -inkey "$1/key.pem" -rawin -in "$1/manifest.json" \
            -sigfile "$1/sig.bin" </dev/null >/dev/null 2>&1; then
            valid=$((valid + 1))
        fi
    done
    [ "$valid" -ge "$THRESHOLD" ]
}

# "URL SIZE SHA256 VERSION" of the archive for this interpreter and platform in the newest release
# that is neither yanked nor still being rolled out; a refusal on stderr (and nothing on stdout).
choose() {  # MANIFEST TAG PLATFORM
    "$python" - "$@" "$SITE" "$CHANNEL" <<'PY'
import json, re, sys, time
path, tag, platform, site, channel = sys.argv[1:]
try:
    manifest = json.load(open(path, encoding="utf-8"))
    expires = manifest["expires_at"]
    fresh = expires > time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    releases = [r for r in manifest["releases"] if not r.get("yanked") and r.get("rollout_percent", 100) == 100]
    channel_ok = manifest["channel"] == channel
except (OSError, ValueError, KeyError, TypeError, AttributeError):
    sys.exit("the manifest is not one of Pilot's (the release site may be broken or tampered with)")
if not channel_ok:
    sys.exit("the manifest is for channel %r, not %s" % (manifest["channel"], channel))
if not fresh:
    sys.exit("the manifest expired at %s: the release site is stale (the publisher's problem, not yours)" % expires)
def version(release):  # the canonical PEP 440 versions manifests carry: 1.2.3, 1.3.0rc1, 1.2.3.post1, ...
    match = re.fullmatch(r"([0-9.]+?)(?:(a|b|rc)([0-9]+))?(?:\.post([0-9]+))?(?:\.dev([0-9]+))?", release["version"])
    if match is None:
        return ((), 0, 0, 0, 0)
    numbers, pre, pre_n, post, dev = match.groups()
    return (tuple(int(n) for n in numbers.split(".")), "a b rc".split().index(pre) if pre else 3,
            int(pre_n or 0), int(post or -1), int(dev) if dev else float("inf"))
for release in sorted(releases, key=version, reverse=True):
    for artifact in release.get("artifacts", []):
        if (artifact.get("python_tag"), artifact.get("platform_tag")) == (tag, platform):
            if not artifact["url"].startswith(site + "/"):
                sys.exit("the manifest points outside %s: refusing it" % site)
            print(artifact["url"], artifact["size"], artifact["sha256"], release["version"])
            sys.exit(0)
sys.exit("no release of Pilot in %s is built for %s on %s" % (channel, tag, platform))
PY
}

check_archive() {  # FILE SIZE SHA256: "" when it matches, else why not
    "$python" - "$@" <<'PY'
import hashlib, os, sys
path, size, sha256 = sys.argv[1], int(sys.argv[2]), sys.argv[3]
actual = os.path.getsize(path)
if actual != size:
    sys.exit("the download is %d bytes, the signed manifest says %d" % (actual, size))
digest = hashlib.sha256()
with open(path, "rb") as stream:
    for block in iter(lambda: stream.read(1 << 20), b""):
        digest.update(block)
if digest.hexdigest() != sha256:
    sys.exit("the download's sha256 differs from the signed manifest's")
PY
}

main() {
    dir=${PILOT_INSTALL_DIR:-}
    while [ $# -gt 0 ]; do
        case $1 in
            --dir) [ $# -ge 2 ] || die "--dir needs a directory"; dir=$2; shift 2 ;;
            --dir=*) dir=${1#--dir=}; shift ;;
            -h | --help) usage; exit 0 ;;
            *) die "unknown option $1 (see --help)" ;;
        esac
    done
    python=$(find_python) || die "no CPython $SPAN found: install one (or set PILOT_PYTHON) and run this again"
    tag=$("$python" -c 'import sys; print("cp%d%d" % sys.version_info[:2])' </dev/null)
    where=$(platform) || exit 1
    work=$(mktemp -d "${TMPDIR:-/tmp}/pilot-install.XXXXXX") || die "cannot make a temporary directory"
    trap 'rm -rf "$work"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM HUP

    fetch "$SITE/$CHANNEL/manifest.json" "$work/manifest.json" ||
        die "cannot download $SITE/$CHANNEL/manifest.json (offline, or the address is wrong?)"
    fetch "$SITE/$CHANNEL/manifest.json.sig" "$work/manifest.json.sig" ||
        die "cannot download $SITE/$CHANNEL/manifest.json.sig"
    check_signatures "$work"
    case $? in
        0) ;;
        1) die "the manifest's signatures do not verify against Pilot's release keys: refusing it (tampered with, or a broken mirror)" ;;
        *) say "openssl cannot check Ed25519 signatures here, so the manifest's signature is NOT checked;" \
            "the archive is still checked against the manifest's size and sha256, and Pilot checks every update itself" ;;
    esac
    choice=$(choose "$work/manifest.json" "$tag" "$where") || exit 1
    # shellcheck disable=SC2086 # four words, none with spaces (the manifest's URLs have none)
    set -- $choice
    url=$1 size=$2 sha256=$3 version=$4
    archive="$work/${url##*/}"
    [ -t 2 ] && say "downloading Pilot $version for $tag on $where ($size bytes)"
    fetch "$url" "$archive" || die "cannot download $url"
    why=$(check_archive "$archive" "$size" "$sha256" 2>&1) || die "$why: refusing it, nothing was installed"
    chmod 755 "$archive"
    if [ -n "$dir" ]; then
        "$python" "$archive" install --dir "$dir" </dev/null
    else
        "$python" "$archive" install </dev/null
    fi
}

main "$@"
