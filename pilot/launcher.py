"""The archive's entry point and boot guard: the build copies this file to the archive's __main__.py.

It runs before any of Pilot's application code is imported, so it uses the standard
library only and old-Python syntax: it must be able to say "wrong interpreter" on any
Python 3, and a new version that is broken at import time must not be able to disable
its own rollback. The build prepends a `PILOT_BUILD = {...}` line; the application reads
it back through `pilot.buildinfo`, never from the archive file, which an update may have
replaced since this process started.

The boot guard. Before an update execs the new archive it writes a trial record
(update/trial.json: from/to versions and build ids, install and backup paths, the pid
that will exec, a deadline) and arms `signal.alarm`, which survives exec. Every start
of any Pilot archive reads that record (one stat when there is none) and decides:

  run       no trial, or another process is still inside one
  trial     this process is the trial boot: run the app; if it ends, raises or hangs past
            the deadline before `commit_boot()`, restore the backup and exec the old
            version in this same process
  rollback  the trial boot died (os._exit, SIGKILL, SIGSEGV) or hung: restore the backup,
            record why, and exec the old version with this process's arguments
  void      the new archive never got installed: drop the record

The application side (pilot.update.sentinel) writes the record and commits it, using
the file helpers below so both sides agree on the format.
"""

import os
import signal
import sys
import time

EXIT_INCOMPATIBLE = 5
BOOT_TIMEOUT_SECONDS = 60


# --- where things are -------------------------------------------------------------------------


def python_tag():
    return "cp%d%d" % sys.version_info[:2]


def platform_tag():
    """`linux_x86_64`, `macos_arm64`, ...: the OS and architecture an archive's native code is for."""
    system = {"darwin": "macos"}.get(sys.platform, sys.platform)
    if system.startswith("linux"):
        system = "linux"
    machine = os.uname().machine.lower()  # what platform.machine() returns on POSIX, without its 6 ms import
    machine = {"amd64": "x86_64", "arm64": "arm64" if system == "macos" else "aarch64"}.get(machine, machine)
    return "%s_%s" % (system, machine)


def pilot_home():
    return os.path.expanduser(os.environ.get("PILOT_HOME") or os.path.join("~", ".pilot"))


def update_dir():
    return os.path.join(pilot_home(), "update")


def trial_path():
    return os.path.join(update_dir(), "trial.json")


def state_path():
    return os.path.join(update_dir(), "state.json")


def extraction_root():
    """Where shiv unpacks site-packages; keyed by build id only, so any file name shares it."""
    return os.path.expanduser(os.environ.get("SHIV_ROOT") or os.path.join("~", ".shiv"))


def extraction_dir(build_id):
    return os.path.join(extraction_root(), "pilot_" + build_id)


METADATA_MEMBER = "pilot-build.json"  # the build metadata, readable by any zip tool
METADATA_CAP = 64 * 1024


def artifact_name(version, python_tag, platform_tag):
    """The file name of a release archive: pilot-1.4.0-cp311-linux_x86_64.pyz."""
    return "pilot-%s-%s-%s.pyz" % (version, python_tag, platform_tag)


def read_build_metadata(zf):
    """pilot-build.json of an open zipfile.ZipFile as a dict; ValueError when it is missing, oversized or no object."""
    import json

    try:
        info = zf.getinfo(METADATA_MEMBER)
    except KeyError:
        raise ValueError("no readable %s" % METADATA_MEMBER) from None
    if info.file_size > METADATA_CAP:
        raise ValueError("its %s is implausibly large" % METADATA_MEMBER)
    try:
        value = json.loads(zf.read(info).decode("utf-8"))
    except ValueError:  # not UTF-8, not JSON
        raise ValueError("no readable %s" % METADATA_MEMBER) from None
    if not isinstance(value, dict):
        raise ValueError("its %s is not an object" % METADATA_MEMBER)
    return value


# --- small durable files ----------------------------------------------------------------------


def fsync_directory(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path):
    """The JSON object at path, or None when it is missing or unreadable (a torn write is no record)."""
    try:
        with open(path, "rb") as stream:
            import json  # here, not at the top: `pilot --version` never needs it (~10 ms)

            value = json.loads(stream.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def atomic_write(path, data, mode=0o644):
    """Write bytes durably and atomically: a private temp file in the same directory (a rename across
    filesystems is not atomic), fsync, rename over path, fsync the directory. Readers see old or new, never part."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    partial = os.path.join(directory, ".%s.%d.partial" % (os.path.basename(path), os.getpid()))
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        remove_file(partial)
        raise
    os.close(fd)
    os.replace(partial, path)
    fsync_directory(directory)


def write_json(path, value, mode=0o644):
    import json

    atomic_write(path, json.dumps(value, indent=2, sort_keys=True).encode("utf-8") + b"\n", mode)


def remove_file(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_directory(os.path.dirname(path))


class UpdateLock:
    """The exclusive lock every install, rollback and commit takes (update/lock).

    Re-entrant within a process: flock on a second descriptor would wait for the first."""

    _fd = None
    _depth = 0

    def __init__(self, blocking=True):
        self.blocking = blocking

    def __enter__(self):
        if UpdateLock._depth == 0:
            import fcntl

            os.makedirs(update_dir(), exist_ok=True)
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            fd = os.open(os.path.join(update_dir(), "lock"), flags, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                raise
            UpdateLock._fd = fd
        UpdateLock._depth += 1
        return self

    def __exit__(self, *exc_info):
        UpdateLock._depth -= 1
        if UpdateLock._depth == 0:
            os.close(UpdateLock._fd)  # closing releases the lock
            UpdateLock._fd = None


def now_iso():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def record_outcome(state, trial, outcome, reason=None):
    """Fold a trial's end into the update state (pure: returns the new state)."""
    state = dict(state or {})
    state["last"] = {
        "state": outcome, "from_version": trial["from_version"], "to_version": trial["to_version"],
        "at": now_iso(), "reason": reason, "install_path": trial["install_path"], "backup_path": trial["backup_path"],
    }
    state["notice_pending"] = True
    if outcome == "rolled_back":
        bad = list(state.get("bad_versions") or [])
        if trial["to_version"] not in bad:
            bad.append(trial["to_version"])
        state["bad_versions"] = bad
    return state


# --- failpoints -------------------------------------------------------------------------------

# Every step of an install, a boot and a rollback where a crash must leave a working Pilot,
# in the order they happen. `PILOT_FAILPOINT=<name>` makes the process SIGKILL itself there
# (tests/security/test_failpoints.py); unset, a failpoint costs one os.environ lookup.
FAILPOINTS = (
    "after-download",          # the new archive is written beside the install (temp file)
    "after-preflight",         # ... and passed its self-test
    "after-trial-open",        # the trial record is written; nothing swapped yet
    "after-backup",            # the current archive is kept as <install>.backup
    "after-rename",            # the new archive is at the install path
    "before-exec",             # old extractions pruned; about to exec the new version
    "boot-trial-start",        # the new version's boot guard is about to start the app
    "boot-before-commit",      # the new version is up and about to commit its boot
    "boot-after-commit",       # the boot is committed
    "rollback-after-restore",  # a failed boot: the backup is back, the outcome not yet recorded
    "during-migration",        # between two statements of a SQLite schema migration
)
FAILPOINT_ENV = "PILOT_FAILPOINT"


def failpoint(name):
    """SIGKILL this process here when PILOT_FAILPOINT names this point (crash-consistency tests)."""
    if os.environ.get(FAILPOINT_ENV) == name:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


# --- the boot guard ---------------------------------------------------------------------------


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def boot_decision(trial, build_id, pid, now, is_alive=pid_alive, version=None):
    """run | trial | rollback | void: what a starting process does about an open trial (pure).

    The new archive is known by its build id and, since two releases of the same code share
    a build id (it hashes site-packages only), by its version too."""
    if trial is None:
        return "run"
    in_progress = now < trial.get("deadline", 0) and is_alive(trial.get("pid", -1))
    if build_id == trial.get("to_build_id") and version in (None, trial.get("to_version")):
        if pid == trial.get("pid"):
            return "trial"
        return "run" if in_progress else "rollback"
    if pid != trial.get("pid") and in_progress:
        return "run"  # the updating process has not exec'd yet
    return "void"


class BootTimeout(BaseException):
    """Raised by SIGALRM in a trial boot that did not commit in time (BaseException: app code cannot swallow it)."""


def _on_alarm(signum, frame):
    raise BootTimeout()


def describe_failure(error):
    if isinstance(error, BootTimeout):
        return "it did not finish starting within the boot deadline (hang)"
    if isinstance(error, SystemExit):
        return "it exited with status %s before confirming its start" % (error.code,)
    text = str(error).strip().splitlines()
    return "it failed to start: %s%s" % (type(error).__name__, (": " + text[0][:200]) if text else "")


def roll_back(trial, reason, argv):
    """Put the backup back at the install path, record why, and exec the old version.

    Returns only when there is no backup to go back to (the failure is recorded all the same)."""
    signal.alarm(0)  # first: a BootTimeout must not cut the rollback short, nor go off after it returns
    with UpdateLock():
        current = read_json(trial_path())
        if current is not None and current.get("started_at") == trial.get("started_at"):
            if not os.path.exists(trial["backup_path"]):
                reason += "; no backup was left to restore"
                write_json(state_path(), record_outcome(read_json(state_path()), trial, "failed", reason))
                remove_file(trial_path())
                return
            os.replace(trial["backup_path"], trial["install_path"])
            fsync_directory(os.path.dirname(trial["install_path"]))
            failpoint("rollback-after-restore")
            state = record_outcome(read_json(state_path()), trial, "rolled_back", reason)
            state["last"]["rollback_pid"] = os.getpid()
            write_json(state_path(), state)
            remove_file(trial_path())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, trial["install_path"]] + list(argv))


def void_trial(trial):
    with UpdateLock():
        current = read_json(trial_path())
        if current is not None and current.get("started_at") == trial.get("started_at"):
            state = record_outcome(read_json(state_path()), trial, "failed", "the update was interrupted before "
                                   "the new version was installed; nothing changed")
            write_json(state_path(), state)
            remove_file(trial_path())


def trial_committed(trial):
    current = read_json(trial_path())
    return current is None or current.get("started_at") != trial.get("started_at")


def run_trial(trial, start_app):
    """Run the app as the trial boot; any way it ends before committing rolls back in this process."""
    signal.signal(signal.SIGALRM, _on_alarm)
    remaining = int(trial.get("deadline", 0) - time.time())
    signal.alarm(max(remaining, 1))  # re-arm: the alarm set before exec may have been cleared by the interpreter
    failpoint("boot-trial-start")
    try:
        code = start_app()
    except BaseException as error:  # every failure of the new version rolls back
        if trial_committed(trial):
            raise
        roll_back(trial, "%s %s" % (trial["to_version"], describe_failure(error)), trial.get("resume_argv", []))
        raise  # no backup to go back to (recorded): the new version's own error is all there is to show
    if not trial_committed(trial):
        reason = "%s exited with status %s before confirming its start" % (trial["to_version"], code)
        roll_back(trial, reason, trial.get("resume_argv", []))
    return code


def guard_boot(build, start_app):
    """Consult the trial record before the app starts; returns the app's exit code."""
    if not os.path.exists(trial_path()):
        return start_app()
    trial = read_json(trial_path())
    decision = boot_decision(trial, build["build_id"], os.getpid(), time.time(), version=build.get("version"))
    if decision == "trial":
        return run_trial(trial, start_app)
    if decision == "rollback":
        reason = "%s did not finish starting (its process ended or hung before confirming)" % trial["to_version"]
        roll_back(trial, reason, sys.argv[1:])
    if decision == "void":
        void_trial(trial)
    return start_app()


# --- start ------------------------------------------------------------------------------------


def incompatibility(build):
    """The one line to print when this interpreter cannot run the archive, or None."""
    running = "%s-%s" % (python_tag(), platform_tag())
    built = "%s-%s" % (build["python_tag"], build["platform_tag"])
    if sys.implementation.name == "cpython" and running == built:
        return None
    return (
        "pilot: this archive was built for %s but this is %s: run it with python%s, "
        "or download %s" % (built, running, _dotted(build["python_tag"]),
                            artifact_name(build["version"], python_tag(), platform_tag()))
    )


def _dotted(tag):
    return tag[2] + "." + tag[3:]  # cp311 -> 3.11


COMPLETE_FILE = ".pilot-complete"
REPAIRED_ENV = "PILOT_EXTRACTION_REPAIRED"


def extraction_complete(directory, build_id):
    """True when directory is a finished extraction of build_id: the marker written last names it."""
    try:
        fd = os.open(os.path.join(directory, COMPLETE_FILE), os.O_RDONLY)
    except OSError:
        return False
    try:
        return os.read(fd, 256).strip() == build_id.encode("ascii")
    finally:
        os.close(fd)


def ensure_extracted(archive, build, verify=False):
    """Return the extracted site-packages, unpacking the archive first if it is not there yet.

    The warm path is one small read (the completion marker) and imports nothing. With verify,
    every file is also checked against the archive and the copy is unpacked again if one is
    missing or truncated (deleted by a user or a cleaner after it was made)."""
    directory = extraction_dir(build["build_id"])
    if verify or not extraction_complete(directory, build["build_id"]):
        extract(archive, build["build_id"], directory, verify)
    return os.path.join(directory, "site-packages")


def extract(archive, build_id, directory, verify=False):
    """Unpack site-packages into directory unless a complete copy is there already; True if it unpacked.

    Cold path only. One process at a time per build (a blocking flock: the others wait, then
    find the marker and reuse the copy). The copy is made in a hidden staging directory, the
    marker is written into it last, and it is renamed into place; a damaged copy is first
    renamed aside, so a process still running from it finds the complete one at the same path."""
    import fcntl
    import shutil
    import zipfile

    root, name = os.path.split(directory)
    os.makedirs(root, exist_ok=True)
    staging, trash = os.path.join(root, ".%s.partial" % name), os.path.join(root, ".%s.old" % name)
    lock = os.open(os.path.join(root, ".%s.lock" % name), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with zipfile.ZipFile(archive) as zf:  # one open file throughout: an update may replace the path
            if read_build_metadata(zf).get("build_id") != build_id:
                raise ArchiveReplaced("pilot: %s is no longer the archive this process started from "
                                      "(an update replaced it); run the command again" % archive)
            members = [i for i in zf.infolist() if i.filename.startswith("site-packages/") and not i.is_dir()]
            if extraction_complete(directory, build_id) and not (verify and damaged(directory, members)):
                return False
            shutil.rmtree(staging, ignore_errors=True)  # left by an extraction that was killed
            unpack(zf, members, staging)
        with open(os.path.join(staging, COMPLETE_FILE), "w") as marker:
            marker.write(build_id + "\n")
        if os.path.lexists(directory):
            shutil.rmtree(trash, ignore_errors=True)
            os.rename(directory, trash)
        os.rename(staging, directory)
        shutil.rmtree(trash, ignore_errors=True)
        return True
    finally:
        os.close(lock)  # closing releases the lock


class ArchiveReplaced(Exception):
    """The archive path now holds another build than the one this process runs."""


def unpack(zf, members, target):
    """Write the members under target with their modes, biggest first, in a few threads.

    Creating files and inflating release the GIL: on an idle 2-core machine two threads take
    about half the time of one. The threads share zf (zipfile serialises the reads)."""
    import shutil
    import threading

    for info in members:
        if info.filename.startswith("/") or ".." in info.filename.split("/"):
            raise ValueError("unsafe member name in the archive: %r" % info.filename)
    for parent in sorted(set(os.path.dirname(info.filename) for info in members)):
        os.makedirs(os.path.join(target, parent), exist_ok=True)
    pending = sorted(members, key=lambda info: info.file_size)  # pop() takes the biggest first
    taking = threading.Lock()
    errors = []

    def work():
        try:
            while True:
                with taking:
                    if not pending or errors:
                        return
                    info = pending.pop()
                path = os.path.join(target, info.filename)
                with zf.open(info) as source, open(path, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                mode = (info.external_attr >> 16) & 0o7777
                if mode:
                    os.chmod(path, mode)
        except BaseException as error:  # re-raised in the calling thread
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(max(1, min(4, os.cpu_count() or 1)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def damaged(directory, members):
    """True if a file of the archive's site-packages is missing from directory or has another size."""
    for info in members:
        try:
            if os.stat(os.path.join(directory, info.filename)).st_size != info.file_size:
                return True
        except OSError:
            return True
    return False


IN_USE_FILE = ".pilot-in-use"
_held_extraction = []


def hold_extraction(directory):
    """Take a shared lock on the extraction this process runs from, so pruning never deletes it under us.

    Returns False when the directory vanished before the lock was granted (a prune won the race)."""
    import fcntl

    try:
        flags = os.O_RDONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(os.path.join(directory, IN_USE_FILE), flags, 0o644)
    except FileNotFoundError:
        return False
    fcntl.flock(fd, fcntl.LOCK_SH)
    _held_extraction.append(fd)  # kept open for the life of the process; exec closes it
    return os.path.isdir(os.path.join(directory, "site-packages"))


def start_application(build, archive):
    repaired = os.environ.pop(REPAIRED_ENV, None)  # set by repair_and_rerun; no child may inherit it
    if sys.argv[1:] == ["--version"]:
        # Answered from the archive's own metadata: works under any interpreter, costs no unpacking.
        print("pilot " + build["version"])
        return 0
    problem = incompatibility(build)
    if problem is not None:
        sys.stderr.write(problem + "\n")
        return EXIT_INCOMPATIBLE
    site_packages = ensure_extracted(archive, build)
    if not hold_extraction(os.path.dirname(site_packages)):  # pruned or emptied under us: unpack it again
        site_packages = ensure_extracted(archive, build, verify=True)
        hold_extraction(os.path.dirname(site_packages))
    # site.addsitedir costs ~0.05 ms here (a listdir for .pth files) and keeps shiv's semantics.
    import site

    before = list(sys.path)
    site.addsitedir(site_packages)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before

    try:
        from pilot.cli import main as cli_main

        return cli_main()
    except ImportError:
        if repaired != build["build_id"]:
            repair_and_rerun(archive, build)
        raise


def repair_and_rerun(archive, build):
    """After an ImportError: if the unpacked copy is damaged, unpack it again and exec this command afresh.

    Returns when the copy is intact: then the ImportError is the program's own and is raised as it is."""
    directory = extraction_dir(build["build_id"])
    try:
        if not extract(archive, build["build_id"], directory, verify=True):
            return
    except ArchiveReplaced:
        return  # not ours to repair from: the ImportError stands
    sys.stderr.write("pilot: %s was damaged (files missing or truncated); unpacked it again\n" % directory)
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[REPAIRED_ENV] = build["build_id"]
    original = list(getattr(sys, "orig_argv", None) or [])
    flags = original[1:len(original) - len(sys.argv)] if len(original) > len(sys.argv) else []  # e.g. -X importtime
    os.execv(sys.executable, [sys.executable] + flags + [archive] + sys.argv[1:])


def main(build, archive):
    return guard_boot(build, lambda: start_application(build, archive))


if __name__ == "__main__":
    sys.exit(main(PILOT_BUILD, os.path.dirname(os.path.abspath(__file__))))  # noqa: F821 (set by the build)
