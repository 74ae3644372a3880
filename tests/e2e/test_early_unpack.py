"""An update over a slow link unpacks the new archive while it downloads; the pre-flight then finds it warm."""

from __future__ import annotations

from pathlib import Path

import pytest

from pilot import launcher
from tests.support.archives import build_metadata
from tests.support.server import throttle

pytestmark = pytest.mark.slow


def new_build_unpacked(shiv: Path, archive: Path) -> bool:
    build_id = build_metadata(archive)["build_id"]
    return launcher.extraction_complete(str(shiv / f"pilot_{build_id}"), build_id)


@pytest.mark.parametrize(("mode", "unpacked"), [("auto", True), ("never", False)])
def test_over_a_slow_link_the_new_build_is_unpacked_before_the_pre_flight(
        v1, v2, release_site, install_factory, server, tmp_path, mode, unpacked):
    release_site.publish(v2)
    throttle(server, 8 * 1024 * 1024)
    pilot = install_factory(v1)
    shiv = tmp_path / "shiv"
    env = {"SHIV_ROOT": str(shiv), "PILOT_UNPACK_DURING_DOWNLOAD": mode, "PILOT_FAILPOINT": "after-download"}
    result = pilot.run("self-update", "--yes", extra_env=env)  # killed right after the download was verified
    assert result.returncode == -9, result.stderr
    assert new_build_unpacked(shiv, v2) is unpacked
    assert not list(shiv.glob(".pilot_*.early-*"))  # the staging copy became the extraction, or never was
    done = pilot.run("self-update", "--yes", extra_env={k: v for k, v in env.items() if k != "PILOT_FAILPOINT"})
    assert done.returncode == 0, done.stderr
    assert pilot.version() == "pilot 2.0.0"


def test_a_bad_setting_is_refused_before_any_download(v1, release_site, install_factory, server):
    release_site.publish(v1)
    pilot = install_factory(v1)
    result = pilot.run("self-update", "--yes", extra_env={"PILOT_UNPACK_DURING_DOWNLOAD": "sometimes"})
    assert (result.returncode, result.stdout) == (4, "")
    assert result.stderr == ("pilot: PILOT_UNPACK_DURING_DOWNLOAD: 'sometimes' is not one of auto, always, "
                             "never\n")
    assert not [path for path in server.requests if path.endswith(".pyz")]
