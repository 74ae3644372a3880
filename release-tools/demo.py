"""The whole Pilot story on one machine, in one command: `python3 release-tools/demo.py`.

It makes a throwaway signing key, builds Pilot 1.0.0 and 1.1.0 with that key and a local
manifest URL embedded, publishes 1.1.0 to a release tree under demo/site, serves it on
127.0.0.1, installs 1.0.0 as demo/bin/pilot and updates it to 1.1.0 with
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

    step("publish 1.1.0 to the stable channel and verify the tree")
    base_url = f"http://127.0.0.1:{port}"
    run([*release, "publish", "--root", str(work / "site"), "--channel", "stable", "--base-url", base_url,
         "--key", str(work / "keys" / "demo.key"), str(archives["1.1.0"])])
    run([*release, "verify", "--root", str(work / "site"), "--channel", "stable",
         "--trusted-key", str(work / "keys" / "demo.pub")])

    step(f"serve the release tree on {base_url}")
    server = serve(work / "site", port)

    step("install 1.0.0 the way a user does: one file, then run it")
    pilot = work / "bin" / "pilot"
    pilot.parent.mkdir(parents=True)
    shutil.copyfile(archives["1.0.0"], pilot)
    pilot.chmod(0o755)
    env = {**os.environ, "PILOT_HOME": str(work / "home"), "SHIV_ROOT": str(work / "shiv")}
    env.pop("PILOT_MANIFEST_URL", None)
    python = [sys.executable, str(pilot)]
    run([*python, "--version"], env)
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
