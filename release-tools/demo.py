"""The whole Pilot story on one machine, in one command: `python3 release-tools/demo.py`.

It makes a throwaway signing key, builds Pilot 1.0.0 and 1.1.0 with that key and a local
manifest URL embedded, publishes 1.0.0 to a release tree under demo/site and serves it on
127.0.0.1, installs it as demo/bin/pilot with the site's one-line installer
(`curl -fsSL SITE/install.sh | sh`), publishes 1.1.0 and updates to it with
`pilot self-update`, the way a user would. Everything it writes stays under demo/
(or --workdir); nothing touches ~/.pilot.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(command: list[str], env: dict | None = None, check: bool = True) -> str:
    """Run a step and show it; returns its combined output."""
    shown = " ".join(Path(c).name if c == sys.executable else c for c in command)
    print(f"$ {shown}", flush=True)
    result = subprocess.run(command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = result.stdout.strip()
    if output:
        print("  " + output.replace("\n", "\n  "), flush=True)
    if check and result.returncode != 0:
        sys.exit(f"demo: the command above failed with status {result.returncode}")
    return result.stdout


def serve(root: Path, port: int) -> http.server.ThreadingHTTPServer:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=REPO / "demo")
    args = parser.parse_args()
    work = args.workdir.resolve()
    for stale in ("site", "bin", "home", "dist"):
        shutil.rmtree(work / stale, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    manifest_url = f"http://127.0.0.1:{port}/stable/manifest.json"
    release = [sys.executable, str(REPO / "release-tools" / "release.py")]

    step("a throwaway release key (a real one lives in a CI secret)")
    if not (work / "keys" / "demo.key").exists():
        run([*release, "keygen", "--out", str(work / "keys"), "--name", "demo"])
    else:
        print(f"reusing {work / 'keys' / 'demo.key'}")

    step("build two versions, each trusting that key and pointing at the local release server")
    archives = {}
    for version in ("1.0.0", "1.1.0"):
        out = run([sys.executable, str(REPO / "build" / "build.py"), "--version", version, "--out", str(work / "dist"),
                   "--trusted-key", str(work / "keys" / "demo.pub"), "--manifest-url", manifest_url])
        archives[version] = Path(out.strip().splitlines()[-1])

    base_url = f"http://127.0.0.1:{port}"

    def publish(version: str) -> None:
        run([*release, "publish", "--root", str(work / "site"), "--channel", "stable", "--base-url", base_url,
             "--key", str(work / "keys" / "demo.key"), str(archives[version])])
        run([*release, "verify", "--root", str(work / "site"), "--channel", "stable",
             "--trusted-key", str(work / "keys" / "demo.pub")])

    step("publish 1.0.0 to the stable channel (with install.sh at the site's root) and verify the tree")
    publish("1.0.0")

    step(f"serve the release tree on {base_url}")
    server = serve(work / "site", port)

    step("install it the way a user does: curl -fsSL .../install.sh | sh")
    pilot = work / "bin" / "pilot"
    env = {**os.environ, "PILOT_HOME": str(work / "home"), "SHIV_ROOT": str(work / "shiv"),
           "PILOT_PYTHON": sys.executable}  # the installer would find a python3; this one is known to be 3.11+
    env.pop("PILOT_MANIFEST_URL", None)
    installer = urllib.request.urlopen(f"{base_url}/install.sh", timeout=30).read().decode()
    print(f"$ curl -fsSL {base_url}/install.sh | sh -s -- --dir {pilot.parent}", flush=True)
    installed = subprocess.run(["sh", "-s", "--", "--dir", str(pilot.parent)], input=installer, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print("  " + installed.stdout.strip().replace("\n", "\n  "), flush=True)
    if installed.returncode != 0:
        sys.exit(f"demo: the installer failed with status {installed.returncode}")
    python = [sys.executable, str(pilot)]
    run([*python, "--version"], env)

    step("publish 1.1.0")
    publish("1.1.0")
    run([*python, "self-update", "--check"], env)

    step("update: download, verify signature and sha256, self-test, swap, re-exec, commit")
    run([*python, "self-update", "--yes"], env)
    run([*python, "--version"], env)
    run([*python, "self-update", "--status"], env)
    server.shutdown()
    print(f"\ndone: {pilot} is now 1.1.0, with 1.0.0 kept as {pilot}.backup "
          f"(try `{Path(sys.executable).name} {pilot} self-update --rollback`, with PILOT_HOME={work / 'home'})")


if __name__ == "__main__":
    main()
