"""The archive's entry point: the build copies this file to the archive's __main__.py.

It runs before any of Pilot's application code is imported, so it uses the
standard library only and old-Python syntax: it must be able to say "wrong
interpreter" on any Python 3 and must keep working when the application code
of a new version is broken. The build prepends a `PILOT_BUILD = {...}` line;
the application reads it back through `pilot.buildinfo`, never from the archive
file (which an update may have replaced since this process started).
"""

import os
import sys

EXIT_INCOMPATIBLE = 5


def python_tag():
    return "cp%d%d" % sys.version_info[:2]


def platform_tag():
    """`linux_x86_64`, `macos_arm64`, ...: the OS and architecture an archive's native code is for."""
    import platform

    system = {"darwin": "macos"}.get(sys.platform, sys.platform)
    if system.startswith("linux"):
        system = "linux"
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "arm64" if system == "macos" else "aarch64"}.get(machine, machine)
    return "%s_%s" % (system, machine)


def extraction_root():
    """Where shiv unpacks site-packages; keyed by build id only, so any file name shares it."""
    return os.path.expanduser(os.environ.get("SHIV_ROOT") or os.path.join("~", ".shiv"))


def site_packages_dir(build):
    return os.path.join(extraction_root(), "pilot_" + build["build_id"], "site-packages")


def incompatibility(build):
    """The one line to print when this interpreter cannot run the archive, or None."""
    running = "%s-%s" % (python_tag(), platform_tag())
    built = "%s-%s" % (build["python_tag"], build["platform_tag"])
    if sys.implementation.name == "cpython" and running == built:
        return None
    return (
        "pilot: this archive was built for %s but this is %s: run it with python%s, "
        "or download pilot-%s-%s.pyz" % (built, running, _dotted(build["python_tag"]), build["version"], running)
    )


def _dotted(tag):
    return tag[2] + "." + tag[3:]  # cp311 -> 3.11


def ensure_extracted(archive, build):
    """Return the extracted site-packages, unpacking the archive first if it is not there yet."""
    site_packages = site_packages_dir(build)
    if not os.path.isdir(site_packages):
        # Cold path only: shiv's extractor takes a file lock and renames a finished
        # temp directory into place, so concurrent first starts are safe.
        import zipfile
        from pathlib import Path

        import _bootstrap

        with zipfile.ZipFile(archive) as zf:
            _bootstrap.extract_site_packages(zf, Path(site_packages).parent)
    return site_packages


def main(build, archive):
    if sys.argv[1:] == ["--version"]:
        # Answered from the archive's own metadata: works under any interpreter, costs no unpacking.
        print("pilot " + build["version"])
        return 0
    problem = incompatibility(build)
    if problem is not None:
        sys.stderr.write(problem + "\n")
        return EXIT_INCOMPATIBLE
    site_packages = ensure_extracted(archive, build)
    import site

    before = list(sys.path)
    site.addsitedir(site_packages)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before

    from pilot.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main(PILOT_BUILD, os.path.dirname(os.path.abspath(__file__))))  # noqa: F821 (set by the build)
