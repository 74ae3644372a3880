"""A `pilot self-update` whose archive another process replaced before it took the lock refuses to reinstall."""

from __future__ import annotations

import argparse
import json
import zipfile

import pytest

from pilot.buildinfo import BuildInfo, platform_tag, python_tag
from pilot.commands import self_update
from pilot.errors import UpdateError
from pilot.update.install import Paths


def test_an_update_started_by_a_replaced_archive_is_refused(tmp_path):
    archive = tmp_path / "pilot"
    with zipfile.ZipFile(archive, "w") as zf:  # what the other process installed
        zf.writestr("pilot-build.json", json.dumps({"version": "2.0.0"}))
    build = BuildInfo(version="1.0.0", python_tag=python_tag(), platform_tag=platform_tag(), build_id="b" * 64,
                      archive=archive, trusted_keys=(), threshold=1, source_commit=None, manifest_url=None)

    class NoNetwork:
        paths = Paths.for_archive(archive)

        def check(self, target=None):
            pytest.fail("it went on to check for updates")

    args = argparse.Namespace(to=None, from_file=None, yes=True, no_restart=False)
    with pytest.raises(UpdateError, match=r"pilot 2\.0\.0 was installed by another process while this 1\.0\.0 started"):
        self_update.update(NoNetwork(), build, args)
