"""The release-root rule: an artifact URL must lie under the manifest URL's parent's parent."""

from __future__ import annotations

import pytest

from pilot.errors import ManifestError
from pilot.update.manifest import check_artifact_url, release_root

ROOT = "https://releases.example.org/pilot/"


@pytest.mark.parametrize(("manifest_url", "root"), [
    ("https://releases.example.org/pilot/stable/manifest.json", ROOT),
    ("https://Releases.Example.org:8443/a/b/beta/manifest.json", "https://releases.example.org:8443/a/b/"),
    ("http://127.0.0.1:8000/stable/manifest.json", "http://127.0.0.1:8000/"),
    ("http://127.0.0.1:8000/manifest.json", "http://127.0.0.1:8000/"),
    ("/srv/site/stable/manifest.json", None),
    ("site/stable/manifest.json", None),
])
def test_release_root_is_the_manifest_urls_grandparent(manifest_url, root):
    assert release_root(manifest_url) == root


@pytest.mark.parametrize("url", [
    "https://releases.example.org/pilot/releases/2.0.0/pilot-2.0.0-cp311-linux_x86_64.pyz",
    "https://RELEASES.example.org:443/pilot/releases/2.0.0/pilot.pyz",
    "https://releases.example.org/pilot/releases/2.0.0/pilot.pyz?download=1",
])
def test_urls_under_the_root_are_accepted(url):
    check_artifact_url(url, ROOT)


@pytest.mark.parametrize(("url", "why"), [
    ("https://releases.example.org/pilot/../other/pilot.pyz", ". or .."),
    ("https://releases.example.org/pilot/releases/./x/../../../etc/pilot.pyz", ". or .."),
    ("https://releases.example.org/pilot/%2e%2e/other/pilot.pyz", ". or .."),
    ("https://releases.example.org/pilot/%2E%2E/other/pilot.pyz", ". or .."),
    ("https://releases.example.org/pilot/releases%2f..%2f..%2fx.pyz", "separator"),
    ("https://releases.example.org/pilot/releases\\..\\x.pyz", "separator"),
    ("https://releases.example.org/other/pilot.pyz", "outside the release root"),
    ("https://releases.example.org/pilotx/pilot.pyz", "outside the release root"),
    ("https://evil.example.org/pilot/releases/pilot.pyz", "another host"),
    ("https://releases.example.org.evil.example/pilot/x.pyz", "another host"),
    ("https://releases.example.org:8443/pilot/x.pyz", "another host"),
    ("https://user@releases.example.org/pilot/x.pyz", "credentials"),
    ("http://releases.example.org/pilot/x.pyz", "uses 'http'"),
    ("https://releases.example.org:99999/pilot/x.pyz", "malformed"),
])
def test_urls_that_escape_the_root_are_refused(url, why):
    with pytest.raises(ManifestError, match="artifact URL") as caught:
        check_artifact_url(url, ROOT)
    assert why in caught.value.message
    assert "releases.example.org/pilot/" in caught.value.hint
