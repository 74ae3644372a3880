"""The archive's entry point and boot guard: the build copies this file to the archive's __main__.py.

It runs before any of Pilot's application code is imported, so it uses the standard
library only and old-Python syntax: it must be able to say "wrong interpreter" on any
Python 3, and a new version that is broken at import time must not be able to disable
its own rollback. The build's metadata is the module `pilot_build` beside it (`PILOT_BUILD =
{...}`), imported at the start into this module; the application reads it back through
`pilot.buildinfo`, never from the archive file, which an update may have replaced since
this process started.

The boot guard. Before an update swaps the new archive in it writes a trial record
(update/trial.json: from/to versions and build ids, install and backup paths, and either
the pid that is about to exec with a deadline, or no pid at all when the new version is
to start with the user's next command). Every start of any Pilot archive reads that
record (one stat when there is none) and decides (`boot_decision`):

  run       no trial, or another process is inside one (the updater before its exec)
  trial     the updater exec'd this process into the new version: be its trial boot
  claim     the new version has not started yet (`--no-restart`, or the updater was killed
            or interrupted after the swap): this start becomes its trial boot
  rollback  the trial boot died (os._exit, SIGKILL, SIGSEGV) or hung: restore the backup,
            record why, and exec the old version with this process's arguments
  void      the old version runs from the install path: the new one never got there

A trial boot runs the application under `signal.alarm` (which survives exec). It is
decided by the new version's own start only:
  - it succeeds when the application confirms its start (`pilot.update.sentinel`: every
    command once its arguments are parsed, `pilot start` once its main loop is up);
  - it fails, and is rolled back in this same process, when an exception escapes, the
    deadline passes (a hang), or the application exits before confirming;
  - it is neither when the start is interrupted (SIGINT, SIGTERM, SIGHUP) or its output
    cannot be written (a closed terminal or pipe, a full disk under stdout): the record
    is given back and the next start tries again.

Recovery needs no application code: `pilot self-update --status` and `--rollback` are
answered here (`recover`), so they work however broken the installed version is.

The application side (pilot.update.sentinel for the trial, pilot.update.state for the
state file) uses the helpers below, so both sides share one format and one fold
(`record_outcome`).
"""

import os
import sys
import time

try:
    import _thread
except ImportError:  # Python 2, which must still be told it is the wrong interpreter
    import thread as _thread

EXIT_INCOMPATIBLE = 5
BOOT_TIMEOUT_SECONDS = 60
BOOT_TIMEOUT_ENV = "PILOT_BOOT_TIMEOUT"
BOOT_PROTOCOL = 2  # stamped into each build: 2 = pending trials, claims, signals kept blocked across the exec
SIGNALS_BLOCKED_ENV = "PILOT_SIGNALS_BLOCKED"  # set by an updater that execs with the stop signals blocked


def stop_signals():
    """SIGINT, SIGTERM and SIGHUP. `signal` is imported where it is used: it pulls in enum (~4 ms),
    and most starts (no trial open, no daemon) never need it."""
    import signal

    return (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


# --- where things are -------------------------------------------------------------------------


def python_tag():
    return "cp%d%d" % sys.version_info[:2]


def platform_tag():
    """`linux_x86_64`, `macos_arm64`, ...: the OS and architecture an archive's native code is for."""
    system = {"darwin": "macos"}.get(sys.platform, sys.platform)
    if system.startswith("linux"):
        system = "linux"
    machine = os.uname()[4].lower()  # platform.machine() on POSIX, without its 6 ms import; [4]: also on Python 2
    machine = {"amd64": "x86_64", "arm64": "arm64" if system == "macos" else "aarch64"}.get(machine, machine)
    return "%s_%s" % (system, machine)


def pilot_home():
    return os.path.expanduser(os.environ.get("PILOT_HOME") or os.path.join("~", ".pilot"))


def update_dir():
    return os.path.join(pilot_home(), "update")


def home_problem(home, create=True):
    """Why PILOT_HOME cannot be used (a file, unwritable, cannot be made), or None. Made when missing."""
    if create and not os.path.lexists(home):
        try:
            os.makedirs(home)
        except OSError as error:
            if not os.path.isdir(home):  # not another Pilot making it at the same moment
                return "cannot create PILOT_HOME %s: %s" % (home, error.strerror or error)
    if os.path.lexists(home) and not os.path.isdir(home):
        return "PILOT_HOME %s is not a directory" % home
    if os.path.isdir(home) and not os.access(home, os.R_OK | os.W_OK | os.X_OK):
        return "cannot write to PILOT_HOME %s" % home
    return None


HOME_HINT = "set PILOT_HOME to a directory you can write, or fix this one"


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
PAYLOAD_MEMBER = "site-packages.zip"  # stored: an inner zip of what is unpacked (see build/build.py)
BUILD_MODULE = "pilot_build"  # beside __main__ in the archive and in its unpacked copy: PILOT_BUILD = {...}
ARCHIVE_ENV = "PILOT_ARCHIVE"  # set by the sh preamble when it starts the unpacked copy


def artifact_name(version, platform_tag):
    """The file name of a release archive: pilot-1.4.0-linux_x86_64.pyz (one for every CPython it supports)."""
    return "pilot-%s-%s.pyz" % (version, platform_tag)


def build_pythons(build):
    """The interpreters a build runs under (`python_tags`), oldest first; an archive built for one has only
    `python_tag`."""
    tags = build.get("python_tags") or [build.get("python_tag")]
    return list(tags) if isinstance(tags, (list, tuple)) else []


def interpreter_of(name):
    """`cp312` for a file only CPython 3.12 can load (`yaml/_yaml.cpython-312-x86_64-linux-gnu.so`: the
    extension-module suffix names it), None for one every interpreter shares (sources, `.abi3.so`)."""
    base = name.rsplit("/", 1)[-1]
    at = base.find(".cpython-")
    if at < 0:
        return None
    digits = base[at + len(".cpython-"):].split("-", 1)[0].split(".", 1)[0]
    return "cp" + digits if digits.isdigit() else None


def unpacked_here(name):
    """Whether this interpreter unpacks member `name`: the shared files and its own native ones only."""
    return interpreter_of(name) in (None, python_tag())


def read_build_metadata(zf):
    """pilot-build.json of an open zipfile.ZipFile as a dict; ValueError when it is missing, oversized or no object."""
    import json

    try:
        info = zf.getinfo(METADATA_MEMBER)
    except KeyError:
        info = None
    value = None
    if info is not None and info.file_size <= METADATA_CAP:
        try:
            value = json.loads(zf.read(info).decode("utf-8"))
        except ValueError:  # not UTF-8, not JSON
            value = None
    if info is not None and info.file_size > METADATA_CAP:
        raise ValueError("its %s is implausibly large" % METADATA_MEMBER)
    if value is None:
        raise ValueError("no readable %s" % METADATA_MEMBER)  # not `from None`: this module parses on Python 2
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


def atomic_write(path, data, mode=0o644, durable=True):
    """Write bytes durably and atomically: a private temp file in the same directory (a rename across
    filesystems is not atomic), fsync, rename over path, fsync the directory. Readers see old or new, never part.
    durable=False skips the fsyncs (a few ms each here): for a hint that may be lost, never be torn."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    partial = os.path.join(directory, ".%s.%d.partial" % (os.path.basename(path), os.getpid()))
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
        os.close(fd)
        fd = None
        os.replace(partial, path)
    except BaseException:
        if fd is not None:
            os.close(fd)
        remove_file(partial)
        raise
    if durable:
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


_UPDATE_LOCK_HOLDERS = {}  # thread ident -> [descriptor, depth]; each thread touches only its own entry


class UpdateLock:
    """The short lock around every change to the update's files: update/state.json, update/trial.json
    and the install itself (update/lock).

    Exclusive across processes and across threads; re-entrant within one thread (flock on a second
    descriptor would wait for the first), so a thread holding it may call code that takes it again."""

    def __init__(self, blocking=True):
        self.blocking = blocking

    def __enter__(self):
        held = _UPDATE_LOCK_HOLDERS.get(_thread.get_ident())
        if held is not None:
            held[1] += 1
            return self
        fd = _lock_descriptor("lock", self.blocking)
        _UPDATE_LOCK_HOLDERS[_thread.get_ident()] = [fd, 1]
        return self

    def __exit__(self, *exc_info):
        me = _thread.get_ident()
        held = _UPDATE_LOCK_HOLDERS[me]
        held[1] -= 1
        if held[1] == 0:
            del _UPDATE_LOCK_HOLDERS[me]
            os.close(held[0])  # closing releases the lock


class UpdateInProgress:
    """Held from the first step of one update or rollback to its end (update/update.lock).

    A second update fails at once, whether it runs in another process or in another thread of
    this one: each holder has its own descriptor, and flock excludes descriptors, not processes.
    The descriptor is close-on-exec, so the exec into a new version releases it."""

    def __init__(self):
        self.fd = None

    def acquire(self):
        """True when this holder now owns the update; False when another one runs."""
        try:
            self.fd = _lock_descriptor("update.lock", blocking=False)
        except BlockingIOError:
            return False
        return True

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _lock_descriptor(name, blocking):
    import fcntl

    os.makedirs(update_dir(), exist_ok=True)
    fd = os.open(os.path.join(update_dir(), name), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BaseException:
        os.close(fd)
        raise
    return fd


# --- durations --------------------------------------------------------------------------------

DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_seconds(text):
    """'90', '90s', '2m', '1.5h', '30d' -> seconds (a float > 0); None for anything else.

    The one grammar of durations: config.yaml, the environment and the release tools all use it."""
    text = str(text).strip().lower()
    number = text.rstrip("".join(DURATION_UNITS)).strip()
    unit = text[len(number):].strip()
    digits = number.replace(".", "", 1)
    if unit not in DURATION_UNITS or not digits or any(c not in "0123456789" for c in digits):
        return None
    seconds = float(number) * DURATION_UNITS[unit]
    return seconds if 0 < seconds < float("inf") else None


def boot_timeout():
    """PILOT_BOOT_TIMEOUT in whole seconds (default 60). The updater refuses a bad value before it
    downloads anything; here, where nothing may fail, a bad value means the default."""
    seconds = parse_seconds(os.environ.get(BOOT_TIMEOUT_ENV, "")) or BOOT_TIMEOUT_SECONDS
    return max(1, int(-(-seconds // 1)))


# --- the update state: one outcome-folding function -------------------------------------------


def now_iso():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def rollback_untold():
    """Whether update/state.json holds a rollback nobody was told of yet: one stat, and a small read only
    after an update. Every command asks; the update engine is imported only when there is one to tell.
    An upgrade's notice stays for the dashboard, which shows it (a command has nothing to say about it)."""
    if not os.path.exists(state_path()):
        return False
    state = read_json(state_path()) or {}
    return state.get("notice_pending") is True and (state.get("last") or {}).get("state") == "rolled_back"


def standing_of(running_version, state=None):
    """What the last verified update check said of running_version (below the channel's minimum, yanked or
    halted): update/state.json's "standing" (pilot.update.state.remember_standing); None otherwise. One stat
    on a home that never updated; none when the caller has read the state already."""
    if state is None:
        if running_version is None or not os.path.exists(state_path()):
            return None
        state = read_json(state_path()) or {}
    entry = state.get("standing")
    if not isinstance(entry, dict) or entry.get("version") != running_version:
        return None
    line = entry.get("line")
    return line if isinstance(line, str) and line else None


def record_outcome(state, trial, outcome, reason=None, notice=True):
    """Fold how an update ended into the update state (pure: returns the new state).

    rolled_back          the new version failed to start: it is skipped from then on (bad_versions)
    rolled_back_by_user  `--rollback`: the version rolled back from is not chosen by itself again
    committed            the version proved it starts: it is neither bad nor declined any more
    installed, failed    nothing more to remember"""
    state = dict(state or {})
    state["last"] = {
        "state": outcome, "from_version": trial["from_version"], "to_version": trial["to_version"],
        "at": now_iso(), "reason": reason, "install_path": trial["install_path"], "backup_path": trial["backup_path"],
    }
    if trial.get("download"):  # how the new archive came (pilot.update.delta.Report), for `--after-restart --json`
        state["last"]["download"] = trial["download"]
    state["notice_pending"] = notice
    if outcome == "rolled_back":
        state["bad_versions"] = _with(state.get("bad_versions"), trial["to_version"])
    elif outcome == "rolled_back_by_user":
        state["user_rollbacks"] = _with(state.get("user_rollbacks"), trial["from_version"])
    elif outcome == "committed":
        for key in ("bad_versions", "user_rollbacks"):
            if trial["to_version"] in (state.get(key) or ()):
                state[key] = [v for v in state[key] if v != trial["to_version"]]
    return state


def _with(versions, version):
    versions = list(versions or [])
    return versions if version in versions else versions + [version]


def fold_state(trial, outcome, reason=None, notice=True, **last):
    """Read the state, fold one outcome in (with extra fields for `last`), write it. Call under UpdateLock."""
    state = record_outcome(read_json(state_path()), trial, outcome, reason, notice)
    state["last"].update(last)
    write_json(state_path(), state)
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
# Set by an update's pre-flight for an install whose dashboard has run: the new version's self-test
# imports the dashboard too. An environment variable, not an option: an older version ignores it.
SELF_TEST_DASHBOARD_ENV = "PILOT_SELF_TEST_DASHBOARD"


def failpoint(name):
    """SIGKILL this process here when PILOT_FAILPOINT names this point (crash-consistency tests)."""
    if os.environ.get(FAILPOINT_ENV) == name:
        sys.stdout.flush()
        sys.stderr.flush()
        import signal

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


def boot_decision(trial, build_id, pid, now, is_alive=pid_alive, version=None, at_install=True):
    """What a starting process does about an open trial (pure): run | trial | claim | rollback | void.

    The new archive is known by its build id and by its version (archives built before the build
    id covered the metadata shared one between releases of the same code). `at_install`: this process was
    started from the install path the trial names."""
    if trial is None:
        return "run"
    owner, deadline = trial.get("pid"), trial.get("deadline")
    in_progress = owner is not None and is_alive(owner) and (deadline is None or now < deadline)
    if build_id == trial.get("to_build_id") and version in (None, trial.get("to_version")):
        if owner == pid:
            return "trial"  # exec'd by the updater (or a re-exec of our own claim)
        if in_progress:
            return "run"  # the updater has not exec'd yet, or another start is the trial boot
        if not trial.get("booted"):
            return "claim"  # the new version has never started: after --no-restart, or an interrupted update
        return "rollback"  # its start died or hung before confirming
    if owner == pid or (not in_progress and at_install):
        return "void"  # the old version runs from the install path: the new one never got there
    return "run"


class BootTimeout(BaseException):
    """Raised by SIGALRM in a trial boot that did not commit in time (BaseException: app code cannot swallow it)."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that every `except KeyboardInterrupt` ends cleanly too."""

    def __init__(self, signum):
        KeyboardInterrupt.__init__(self, signum)
        self.signum = signum


_DEFERRING = [0]  # > 0 while a step that must not be cut in half runs (interrupts_deferred)
_DEFERRED = []  # the stop signals that arrived meanwhile


def raise_interrupted(signum, frame):
    """The handler for SIGINT, SIGTERM and SIGHUP: raise Interrupted, or note it while deferred."""
    if _DEFERRING[0]:
        _DEFERRED.append(signum)
        return
    raise Interrupted(signum)


def interrupt_pending():
    return bool(_DEFERRED)


class interrupts_deferred:
    """Within it, a stop signal handled by raise_interrupted waits: the swap of an archive is never cut
    in half. On the way out the first one that arrived is raised."""

    def __enter__(self):
        _DEFERRING[0] += 1
        return self

    def __exit__(self, exc_type, exc, tb):
        _DEFERRING[0] -= 1
        if _DEFERRING[0] == 0 and _DEFERRED:
            signum = _DEFERRED[0]
            del _DEFERRED[:]
            if exc_type is None:
                raise Interrupted(signum)
        return False


def handle_stop_signals():
    """Make SIGINT, SIGTERM and SIGHUP raise Interrupted (one line and exit 128+N, finally blocks run)."""
    import signal

    for signum in stop_signals():
        signal.signal(signum, raise_interrupted)


def _on_alarm(signum, frame):
    raise BootTimeout()


def exit_status_for(error):
    """128 + the signal: the shell's convention for a process a signal ended (130 for Ctrl-C)."""
    return 128 + getattr(error, "signum", 2)  # 2: SIGINT, everywhere


OUTPUT_ERRNOS = ("EPIPE", "EIO", "EBADF", "ENOSPC", "EDQUOT", "ENXIO")


def is_unwritable_output(error):
    """True for an OSError that says the terminal, pipe or disk under stdout/stderr cannot take output."""
    import errno

    return isinstance(error, OSError) and error.errno in [getattr(errno, n, None) for n in OUTPUT_ERRNOS]


def not_a_failed_start(error):
    """Interrupts and unwritable output end a start without saying anything about the new version."""
    return isinstance(error, KeyboardInterrupt) or is_unwritable_output(error)


def describe_failure(error):
    if isinstance(error, BootTimeout):
        return "it did not finish starting within the boot deadline (hang)"
    if isinstance(error, SystemExit):
        return "it exited with status %s before confirming its start" % (error.code,)
    text = str(error).strip().splitlines()
    return "it failed to start: %s%s" % (type(error).__name__, (": " + text[0][:200]) if text else "")


def same_trial(a, b):
    return a is not None and b is not None and a.get("started_at") == b.get("started_at")


def open_trial_record():
    return read_json(trial_path())


def roll_back(trial, reason, argv):
    """Put the backup back at the install path, record why, and exec the old version.

    Returns only when there is no backup to go back to (the failure is recorded all the same)."""
    import signal

    signal.alarm(0)  # first: a BootTimeout must not cut the rollback short, nor go off after it returns
    with UpdateLock():
        if same_trial(read_json(trial_path()), trial):
            if not os.path.exists(trial["backup_path"]):
                fold_state(trial, "failed", reason + "; no backup was left to restore")
                remove_file(trial_path())
                return
            os.replace(trial["backup_path"], trial["install_path"])  # a rename keeps the file's owner and mode
            fsync_directory(os.path.dirname(trial["install_path"]))
            failpoint("rollback-after-restore")
            fold_state(trial, "rolled_back", reason, rollback_pid=os.getpid())
            remove_file(trial_path())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, trial["install_path"]] + list(argv))


def void_trial(trial):
    """The old version runs from the install path: the new one never got there, or a rollback put it back."""
    with UpdateLock():
        if same_trial(read_json(trial_path()), trial):
            if trial.get("booted"):  # the rollback restored the backup and was cut short before recording it
                fold_state(trial, "rolled_back", "%s did not finish starting; the previous version was put back"
                           % trial["to_version"])
            else:
                fold_state(trial, "failed", "the update was interrupted before the new version was installed; "
                           "nothing changed")
            remove_file(trial_path())


def claim_trial(trial, argv):
    """Become the trial boot: this process's pid, a fresh deadline unless the updater set one, its arguments.

    Returns the record as written, or None when another process changed it first."""
    with UpdateLock():
        current = read_json(trial_path())
        if not same_trial(current, trial) or (current.get("booted") and current.get("pid") != os.getpid()):
            return None
        if current.get("pid") != os.getpid():  # a start after --no-restart or an interrupted update
            current["deadline"] = time.time() + boot_timeout()
            current["resume_argv"] = list(argv)
        current["pid"] = os.getpid()
        current["booted"] = True
        write_json(trial_path(), current)
        return current


def release_trial(trial):
    """Give an unfinished start back: the trial stays open, and the next start of the new version tries again."""
    with UpdateLock():
        current = read_json(trial_path())
        if same_trial(current, trial) and current.get("pid") == os.getpid():
            current.update(pid=None, deadline=None, booted=False)
            write_json(trial_path(), current)


def trial_still_ours(trial):
    current = read_json(trial_path())
    return same_trial(current, trial) and current.get("pid") == os.getpid()


def say(line):
    """One line to stderr, which may be a terminal that is gone: saying it must never fail."""
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def seconds_left(trial):
    """Whole seconds to the trial's deadline, at least 1 and at most a day, whatever the record holds."""
    deadline = trial.get("deadline")
    if not isinstance(deadline, (int, float)) or deadline != deadline:
        return boot_timeout()
    return int(min(max(deadline - time.time(), 1), 86400))


def run_trial(trial, start_app):
    """Run the app as the trial boot. An exception, a hang or an exit before the app confirms its start
    rolls back in this process; an interrupt or unwritable output leaves the trial for the next start."""
    import signal

    signal.signal(signal.SIGALRM, _on_alarm)
    handle_stop_signals()
    try:
        unblock_inherited_signals()  # after the handlers: a stop that waited across the exec is ours now
        signal.alarm(seconds_left(trial))  # re-armed: the interpreter may have cleared the one set before the exec
        failpoint("boot-trial-start")
        code = start_app()
    except BaseException as error:  # every failure of the new version rolls back
        if not trial_still_ours(trial):
            raise
        if not_a_failed_start(error):
            signal.alarm(0)
            release_trial(trial)
            say("pilot: %s was interrupted while it started; it starts again with your next command"
                % trial["to_version"])
            return exit_status_for(error) if isinstance(error, KeyboardInterrupt) else 1
        roll_back(trial, "%s %s" % (trial["to_version"], describe_failure(error)), trial.get("resume_argv", []))
        raise  # no backup to go back to (recorded): the new version's own error is all there is to show
    if trial_still_ours(trial):
        failure = read_json(trial_path()).get("failure")
        reason = "%s %s" % (trial["to_version"], failure) if failure else \
            "%s exited with status %s before confirming its start" % (trial["to_version"], code)
        roll_back(trial, reason, trial.get("resume_argv", []))
    return code


def guard_boot(build, start_app, archive=None, may_claim=True):
    """Consult the trial record before the app starts; returns the app's exit code.

    may_claim is False for a start that will not run the application (`--version`, the wrong
    interpreter, the recovery commands): it must not become the new version's trial."""
    if not os.path.exists(trial_path()):
        return start_plainly(start_app)
    trial = read_json(trial_path())
    at_install = archive is not None and trial is not None and \
        os.path.realpath(archive) == trial.get("install_path")
    decision = boot_decision(trial, build["build_id"], os.getpid(), time.time(), version=build.get("version"),
                             at_install=at_install)
    if decision == "trial" or (decision == "claim" and may_claim):
        claimed = claim_trial(trial, sys.argv[1:])
        if claimed is not None:
            return run_trial(claimed, start_app)  # which unblocks the signals once its handlers are in place
    if decision == "rollback":
        unblock_inherited_signals(handled=False)  # as before the exec: a stop now ends the rollback's process
        reason = "%s did not finish starting (its process ended or hung before confirming)" % trial["to_version"]
        roll_back(trial, reason, sys.argv[1:])
    elif decision == "void":
        void_trial(trial)
    return start_plainly(start_app)


def start_plainly(start_app):
    """A start that is no trial. A stop that waited across an updater's exec, or comes before the
    application handles stops itself, ends it with one line and 128 + N: never by the signal, never a traceback."""
    try:
        unblock_inherited_signals()
        return start_app()
    except KeyboardInterrupt as error:  # outside the application's own handling (pilot.cli.run): the same line
        import signal

        say("pilot: interrupted (%s)" % signal.Signals(exit_status_for(error) - 128).name)
        return exit_status_for(error)


def unblock_inherited_signals(handled=True):
    """An updater may exec us with the stop signals blocked (so none is lost in the exec): take them back,
    `handled` by handle_stop_signals first, so that a stop which waited is an Interrupted, not a death.

    A trial boot does it once its own handlers are in place; every other start at once, whatever it runs."""
    if os.environ.pop(SIGNALS_BLOCKED_ENV, None):
        import signal

        if handled:
            handle_stop_signals()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals())


# --- recovery that needs no application code --------------------------------------------------


class Refused(Exception):
    """A recovery step that cannot be done; its message is the one line the user sees (exit status 3)."""


def archive_version(path):
    """The version an archive's metadata names, read with zipfile; None when it is unreadable."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return read_build_metadata(zf).get("version")
    except (OSError, ValueError, zipfile.BadZipFile):
        return None


def backup_path_for(install_path):
    return install_path + ".backup"


def swap_back(install_path, backup_path):
    """Exchange install and backup: the backup becomes the install and the install the backup.

    Renames and a hard link only, so both files keep their owner, group and mode, and the install
    path holds a complete archive at every instant."""
    current = os.path.join(os.path.dirname(install_path), ".%s.%d.current" % (os.path.basename(install_path),
                                                                               os.getpid()))
    os.link(install_path, current)
    try:
        os.replace(backup_path, install_path)
        os.replace(current, backup_path)
    finally:
        if os.path.lexists(current):  # os.replace does nothing when the two names are one file already
            os.unlink(current)
    fsync_directory(os.path.dirname(install_path))


def user_rollback(install_path):
    """`pilot self-update --rollback`: swap the install and its backup, under the update's locks.

    Refused while another update runs, while a new version is starting, without a backup, and when
    the backup holds the installed version (there would be nothing to go back to). A new version
    that never started (`--no-restart`) is not kept as the backup: only a version that proved it
    starts may be one. Returns (the version now installed, the one kept as the backup or None)."""
    backup_path = backup_path_for(install_path)
    whole = UpdateInProgress()
    if not whole.acquire():
        raise Refused("another update is running (wait for it to finish, then try again)")
    try:
        with UpdateLock():
            trial = read_json(trial_path())
            if trial is not None and (trial.get("booted") or (trial.get("pid") not in (None, os.getpid()) and
                                      pid_alive(trial["pid"]))):
                raise Refused("a new version is still starting (its trial boot is open; "
                              "run `pilot self-update --status` in a moment)")
            if not os.path.exists(backup_path):
                raise Refused("there is no backup to roll back to (%s does not exist)" % backup_path)
            was_installed, was_backup = archive_version(install_path), archive_version(backup_path)
            if was_backup is None:
                raise Refused("the backup %s is not a readable Pilot archive" % backup_path)
            if was_backup == was_installed:
                raise Refused("the backup holds the installed version %s: there is nothing to roll back to"
                              % was_backup)
            if trial is None:
                swap_back(install_path, backup_path)
                kept = was_installed
            else:  # never started: put the backup back and drop the new version with its trial
                os.replace(backup_path, install_path)
                fsync_directory(os.path.dirname(install_path))
                remove_file(trial_path())
                kept = None
            record = {"from_version": was_installed, "to_version": was_backup, "install_path": install_path,
                      "backup_path": backup_path}
            fold_state(record, "rolled_back_by_user", "rolled back on request (pilot self-update --rollback)",
                       notice=False)
    finally:
        whole.release()
    return was_backup, kept


def status_report(running_version=None):
    """Where the update stands, from update/state.json and update/trial.json (for `self-update --status`)."""
    state = read_json(state_path()) or {}
    trial = read_json(trial_path())
    last = dict(state.get("last") or {})
    if trial is not None:
        phase = "trial" if trial.get("booted") or trial.get("pid") is not None else "pending"
    else:
        phase = last.get("state", "none")
    source = trial or last
    return {
        "state": phase,
        "from_version": source.get("from_version"),
        "to_version": source.get("to_version"),
        "at": None if trial else last.get("at"),
        "reason": None if trial else last.get("reason"),
        "install_path": source.get("install_path"),
        "backup_path": source.get("backup_path"),
        "running_version": running_version,
        "highest_serial": state.get("highest_serial", 0),
        "bad_versions": list(state.get("bad_versions") or []),
        "user_rollbacks": list(state.get("user_rollbacks") or []),
        "rollback_pid": None if trial else last.get("rollback_pid"),
        "download": source.get("download"),
        "standing": standing_of(running_version, state),
    }


def status_lines(info):
    if info["state"] == "none":
        return ["no update has run on this install yet"]
    lines = ["state: %s  %s -> %s  at %s" % (info["state"], info["from_version"], info["to_version"],
                                            info["at"] or "now")]
    if info["state"] == "pending":
        lines.append("%s is installed and starts, under the boot guard, with your next command" % info["to_version"])
    if info["reason"]:
        lines.append("reason: %s" % info["reason"])
    lines.append("install: %s  backup: %s" % (info["install_path"], info["backup_path"]))
    if info["bad_versions"]:
        lines.append("skipped versions (failed to start here): %s" % ", ".join(info["bad_versions"]))
    if info["user_rollbacks"]:
        lines.append("skipped versions (rolled back on request): %s" % ", ".join(info["user_rollbacks"]))
    return lines


def recovery_command(argv):
    """`self-update --status [--json]` or `self-update --rollback [--yes]`: answered by this module alone,
    so that recovery never needs the installed version's application code."""
    if argv[:1] != ["self-update"]:
        return None
    rest = set(argv[1:])
    if "--status" in rest and rest <= {"--status", "--json"}:
        return "status"
    if "--rollback" in rest and rest <= {"--rollback", "--yes", "-y"}:
        return "rollback"
    return None


def recover(command, build, archive):
    """Answer a recovery command here, without the application: it works however broken the installed version is."""
    problem = home_problem(pilot_home(), create=False)
    if problem is not None:
        say("pilot: %s (%s)" % (problem, HOME_HINT))
        return 4
    if command == "status":
        info = status_report(build["version"])
        if "--json" in sys.argv[1:]:
            import json

            print(json.dumps(info, indent=2))
        else:
            print("\n".join(status_lines(info)))
        return 0
    install_path = os.path.realpath(archive)
    try:
        installed, kept = user_rollback(install_path)
    except Refused as refusal:
        say("pilot: %s" % (refusal,))
        return 3
    except OSError as error:
        say("pilot: cannot roll back: %s: %s" % (error.strerror or error, error.filename or install_path))
        return 3
    print(rollback_line(installed, kept, install_path))
    return 0


def rollback_line(installed, kept, install_path):
    if kept is None:
        return "rolled back: pilot %s is installed at %s; the version that had not started yet is removed" % (
            installed, install_path)
    return "rolled back: pilot %s is installed at %s; %s is kept as %s" % (
        installed, install_path, kept, backup_path_for(install_path))


# --- start ------------------------------------------------------------------------------------


# What the release publishes: one archive per platform (.github/workflows/release.yml builds one on each;
# a test holds the two together), each for every one of these interpreters (build/build.py).
PUBLISHED_PYTHONS = ("cp311", "cp312", "cp313")
PUBLISHED_PLATFORMS = ("linux_x86_64", "linux_aarch64", "macos_arm64", "macos_x86_64")


def incompatibility(build):
    """The one line to print when this interpreter cannot run the archive, or None.

    It must work on any Python from 2.7 on, and names only an archive the release publishes."""
    cpython = getattr(getattr(sys, "implementation", None), "name", None) == "cpython"
    tags = build_pythons(build)
    if cpython and python_tag() in tags and build["platform_tag"] == platform_tag():
        return None
    this = "%s-%s" % (python_tag(), platform_tag()) if cpython else "Python " + sys.version.split()[0]
    line = "pilot: this archive is for CPython %s on %s but this is %s" % (
        python_span(tags), build["platform_tag"], this)
    if build["platform_tag"] == platform_tag():
        return line + ": run it with python%s" % dotted(tags[-1])
    if platform_tag() in PUBLISHED_PLATFORMS:
        return line + ": download %s" % artifact_name(build["version"], platform_tag())
    return line + ": Pilot is published for CPython %s on %s" % (
        python_span(PUBLISHED_PYTHONS), ", ".join(PUBLISHED_PLATFORMS))


def python_span(tags):
    """cp311..cp313 -> `3.11 to 3.13`; a single one -> `3.11`."""
    return dotted(tags[0]) if len(tags) == 1 else "%s to %s" % (dotted(tags[0]), dotted(tags[-1]))


def dotted(tag):
    """cp311 -> 3.11: the version a python tag names, as in `python3.11`."""
    return tag[2] + "." + tag[3:]


COMPLETE_FILE = ".pilot-complete"
REPAIRED_ENV = "PILOT_EXTRACTION_REPAIRED"


def extraction_complete(directory, build_id, tag=None):
    """True when directory is a finished extraction of build_id: the marker written last names it on its first
    line, then the interpreters it is ready for (their native files unpacked, Pilot's bytecode compiled); with
    tag, ready for that one too."""
    lines = _marker_lines(directory)
    return lines[:1] == [build_id] and (tag is None or tag in lines[1:])


def _marker_lines(directory):
    try:
        fd = os.open(os.path.join(directory, COMPLETE_FILE), os.O_RDONLY)
    except OSError:
        return []
    try:  # without spaces or tabs around a line: what the sh preamble's `read` sees of the first
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    return [line.strip(" \t") for line in data.decode("ascii", "replace").split("\n") if line.strip(" \t")]


def ensure_extracted(archive, build, verify=False):
    """Return the extracted site-packages, unpacking the archive first if it is not there yet for this
    interpreter.

    The warm path is one small read (the completion marker) and imports nothing. With verify,
    every file is also checked against the archive and the copy is unpacked again if one is
    missing or truncated (deleted by a user or a cleaner after it was made)."""
    directory = extraction_dir(build["build_id"])
    if verify or not extraction_complete(directory, build["build_id"], python_tag()):
        extract(archive, build["build_id"], directory, verify)
    return os.path.join(directory, "site-packages")


def extract(archive, build_id, directory, verify=False):
    """Unpack site-packages into directory unless a complete copy is there already; True if it unpacked.

    Cold path only. One process at a time per build (extraction_lock: the others wait, then
    find the marker and reuse the copy). The copy is made in a hidden staging directory and
    put in place by place_extraction; a copy made by another interpreter gets this one's own
    files added in place (add_interpreter)."""
    import shutil
    import zipfile

    staging = os.path.join(*_beside(directory, ".%s.partial"))
    lock = extraction_lock(directory)
    try:
        with open(archive, "rb") as stream, zipfile.ZipFile(stream) as outer:  # one open file throughout:
            if read_build_metadata(outer).get("build_id") != build_id:       # an update may replace the path
                raise ArchiveReplaced("pilot: %s is no longer the archive this process started from "
                                      "(an update replaced it); run the command again" % archive)
            with open_payload(outer, stream) as zf:
                members = [info for info in zf.infolist() if not info.is_dir() and unpacked_here(info.filename)]
                if extraction_complete(directory, build_id) and not (verify and damaged(directory, members)):
                    return add_interpreter(zf, members, directory)
                shutil.rmtree(staging, ignore_errors=True)  # left by an extraction that was killed
                unpack(zf, members, staging)
        place_extraction(staging, directory, build_id)
        return True
    finally:
        os.close(lock)  # closing releases the lock


def add_interpreter(zf, members, directory):
    """Under extraction_lock, make a complete copy ready for this interpreter too: its native files unpacked and
    Pilot's bytecode compiled beside the other interpreters' (the names differ), the marker rewritten last.
    False when it is ready already. Processes running from the copy meanwhile see only files appear."""
    tag = python_tag()
    ready = _marker_lines(directory)
    if tag in ready[1:]:
        return False
    unpack(zf, [info for info in members if interpreter_of(info.filename) == tag], directory)
    compile_for_interpreter(directory)
    atomic_write(os.path.join(directory, COMPLETE_FILE), ("\n".join(ready + [tag]) + "\n").encode("ascii"),
                 durable=False)
    return True


def compile_for_interpreter(directory):
    """Bytecode of the entry modules and of Pilot's package for this interpreter, in an unpacked copy, where the
    archive carries none for it (no .pyc serves two minor versions; a build ships Pilot's for each interpreter
    it had at hand). Unchecked hashes, as a build writes them: no source check at import. The dependencies
    compile as they are first imported."""
    import importlib.util
    import py_compile

    mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
    sources = [os.path.join(directory, name + ".py") for name in ("__main__", BUILD_MODULE)]
    for root, directories, files in os.walk(os.path.join(directory, "site-packages", "pilot")):
        directories[:] = sorted(d for d in directories if d != "__pycache__")
        sources += [os.path.join(root, name) for name in sorted(files) if name.endswith(".py")]
    for source in sources:
        # The archive may carry this interpreter's bytecode of Pilot (built where that interpreter was at hand);
        # an archive built by a test may lack an entry module.
        if os.path.isfile(source) and not os.path.isfile(importlib.util.cache_from_source(source)):
            # Named relative to the copy, the bytecode is the same wherever it is made (a staging copy, or
            # another SHIV_ROOT); an import names the code after the file it loads it for.
            name = os.path.relpath(source, directory).replace(os.sep, "/")
            py_compile.compile(source, dfile=name, doraise=True, invalidation_mode=mode)


def _beside(directory, pattern):
    root, name = os.path.split(directory)
    return root, pattern % name


def extraction_lock(directory):
    """Wait for and take the lock of one build's extraction (a descriptor: closing it releases the lock)."""
    import fcntl

    root, lock_name = _beside(directory, ".%s.lock")
    os.makedirs(root, exist_ok=True)
    lock = os.open(os.path.join(root, lock_name), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
    except BaseException:
        os.close(lock)
        raise
    return lock


def place_extraction(staging, directory, build_id):
    """Make a finished staging copy the extraction, under extraction_lock: compiled for this interpreter, the
    marker written into it last, and a damaged copy renamed aside first, so a process still running from it
    finds the complete one at the same path."""
    import shutil

    compile_for_interpreter(staging)
    with open(os.path.join(staging, COMPLETE_FILE), "w") as marker:
        marker.write(build_id + "\n" + python_tag() + "\n")
    trash = os.path.join(*_beside(directory, ".%s.old"))
    if os.path.lexists(directory):
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(directory, trash)
    os.rename(staging, directory)
    shutil.rmtree(trash, ignore_errors=True)


class ArchiveReplaced(Exception):
    """The archive path now holds another build than the one this process runs."""


def open_payload(outer, stream):
    """The inner zip of what is unpacked, read through a window on stream (the archive's open file).

    The payload is stored, not compressed, so its bytes sit in the archive as they are: the window
    reads them in place. An archive without a payload member (built before it existed, or by a test)
    carries site-packages/ as members of its own."""
    import zipfile

    try:
        info = outer.getinfo(PAYLOAD_MEMBER)
    except KeyError:
        return _OwnMembers(outer)
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError("%s is compressed; it must be stored" % PAYLOAD_MEMBER)
    header = os.pread(stream.fileno(), 30, info.header_offset)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile("bad local file header for %s" % PAYLOAD_MEMBER)
    start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    return zipfile.ZipFile(_Window(stream.fileno(), start, info.file_size))


class _OwnMembers(object):
    """open_payload's answer for an archive whose site-packages/ are its own members."""

    def __init__(self, zf):
        self.zf = zf

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def infolist(self):
        return [i for i in self.zf.infolist() if i.filename.startswith("site-packages/")]

    def open(self, info):
        return self.zf.open(info)


class _Window(object):
    """A read-only file over bytes [start, start + size) of a descriptor. os.pread keeps no shared
    position, so the threads that unpack can read through it at once (zipfile still serialises)."""

    def __init__(self, fd, start, size):
        self.fd, self.start, self.size, self.position = fd, start, size, 0

    def seekable(self):
        return True

    def tell(self):
        return self.position

    def seek(self, offset, whence=0):
        base = {0: 0, 1: self.position, 2: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def read(self, n=-1):
        left = max(0, self.size - self.position)
        n = left if n is None or n < 0 else min(n, left)
        data = os.pread(self.fd, n, self.start + self.position) if n else b""
        self.position += len(data)
        return data

    def close(self):
        pass  # the descriptor belongs to the caller


def member_path(root, name):
    """Where member `name` goes under root; ValueError for a name that would land elsewhere (absolute,
    `..`, a back slash, an empty segment). The one check for every unpacking: here and pilot.update.early."""
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or ".." in parts or "" in parts[:-1]:
        raise ValueError("unsafe member name in the archive: %r" % (name,))
    return os.path.join(root, *parts)


def unpack(zf, members, target):
    """Write the members under target with their modes, biggest first, in a few threads.

    Creating files and inflating release the GIL: on an idle 2-core machine two threads take
    about half the time of one. The threads share zf (zipfile serialises the reads)."""
    import shutil
    import threading

    for info in members:
        member_path(target, info.filename)
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


def share_entry_module():
    """Let the application's `pilot.launcher` be this module, loaded already as __main__ from the same
    source (the build copies it verbatim), rather than a second copy: that costs ~1.8 ms, and would keep
    state of its own (the deferred interrupts, the update lock's holders, the Interrupted class)."""
    main = sys.modules.get("__main__")
    if getattr(main, "PILOT_BUILD", None) is not None and "pilot.launcher" not in sys.modules:
        sys.modules["pilot.launcher"] = main  # before the package is imported: it imports pilot.launcher itself


def bind_entry_module():
    """Once the application's package is imported: `pilot.launcher` as an attribute too, as an import sets it."""
    package, main = sys.modules.get("pilot"), sys.modules.get("__main__")
    if package is not None and sys.modules.get("pilot.launcher") is main and not hasattr(package, "launcher"):
        package.launcher = main


DEFAULT_ENTRY_POINT = "pilot.cli:main"  # archives built before the entry point was stamped


def load_entry_point(build):
    """The application's main function, named by the build (`module:function`), imported from site-packages."""
    module_name, _, function_name = build.get("entry_point", DEFAULT_ENTRY_POINT).partition(":")
    module = __import__(module_name, fromlist=[function_name])
    return getattr(module, function_name)


def start_application(build, archive):
    repaired = os.environ.pop(REPAIRED_ENV, None)  # set by repair_and_rerun; no child may inherit it
    remember_interpreter()
    if sys.argv[1:] == ["--version"]:
        # Answered from the archive's own metadata: works under any interpreter, costs no unpacking.
        print("pilot " + build["version"])
        return 0
    command = recovery_command(sys.argv[1:])
    if command is not None:
        return recover(command, build, archive)
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
    share_entry_module()
    try:
        entry = load_entry_point(build)
        bind_entry_module()
        return entry()
    except ImportError:  # maybe a file of the unpacked copy was deleted or truncated since it was made
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


# --- the sh preamble --------------------------------------------------------------------------

# The archive begins with this POSIX sh script (zip readers find the zip from its end). Run as
# `./pilot.pyz` or `pilot` on PATH, it answers --version without starting Python, and when the
# unpacked copy of this build is complete and no trial is open it runs that copy's __main__.py
# (this module again, precompiled) without reading the zip; every other start goes through the
# archive's __main__. Its checks are `preamble_route` below, over the same paths: a test runs
# both on the same cases. Every path ends in exec or exit, before the zip's bytes.
PREAMBLE = r"""#!/bin/sh
# Pilot %(version)s: a zip archive behind this sh preamble; `python3 <this file>` runs it as well.
if [ "$#" = 1 ] && [ "$1" = --version ]; then echo "pilot %(version)s"; exit 0; fi
b=%(build_id)s
x() { case $1 in "~"|"~/"*) [ -n "${HOME+set}" ] || return 1; r=$HOME${1#"~"};; "~"*) return 1;; *) r=$1;; esac; }
p='~/.pilot'; [ -n "${PILOT_HOME:-}" ] && p=$PILOT_HOME
s='~/.shiv'; [ -n "${SHIV_ROOT:-}" ] && s=$SHIV_ROOT
h=; d=; x "$p" && h=$r && x "$s" && d=$r/pilot_$b
py=${PILOT_PYTHON:-}
if [ -n "$py" ]; then
  command -v "$py" >/dev/null || { echo "pilot: PILOT_PYTHON=$py: no such interpreter" >&2; exit 5; }
else
  [ -n "$h" ] && { IFS= read -r py <"$h/update/python"; } 2>/dev/null
  if [ -z "$py" ] || ! [ -x "$py" ]; then
    for py in python3 %(candidates)s python ""; do command -v "$py" >/dev/null && break; done
    [ -n "$py" ] || { echo "pilot: no python3 found (Pilot runs on CPython %(span)s;" \
      "install one, or set PILOT_PYTHON)" >&2; exit 5; }
  fi
fi
m=; [ -n "$d" ] && [ "$1" != self-update ] && ! [ -e "$h/update/trial.json" ] && [ -f "$d/__main__.py" ] &&
  { read -r m <"$d/.pilot-complete" || [ -n "$m" ]; } 2>/dev/null
if [ "$m" = "$b" ]; then PILOT_ARCHIVE=$0; export PILOT_ARCHIVE; exec "$py" "$d" "$@"; fi
exec "$py" "$0" "$@"
exit 5
"""


def preamble(build):
    """The sh preamble for a build's metadata (build/build.py writes it in front of the zip)."""
    tags = build_pythons(build)
    return PREAMBLE % {"version": build["version"], "build_id": build["build_id"], "span": python_span(tags),
                       "candidates": " ".join("python" + dotted(tag) for tag in reversed(tags))}


def interpreter_record():
    """The file naming the interpreter that last ran Pilot from this home: the preamble starts it directly."""
    return os.path.join(update_dir(), "python")


def remember_interpreter():
    """Note which interpreter runs this build, so the preamble need not find it on PATH next time, where a
    version manager's shim may stand (pyenv's costs ~60 ms). Only in an existing update directory (a
    command that only reads must not create Pilot's home), and never failing a start."""
    if not sys.executable or not os.path.isdir(update_dir()):
        return
    path = interpreter_record()
    try:
        with open(path) as stream:
            if stream.read().strip("\n") == sys.executable:
                return
    except (OSError, ValueError):
        pass
    try:  # a hint, lost at worst with a power cut: not worth two fsyncs on the first start after an update
        atomic_write(path, (sys.executable + "\n").encode("utf-8"), durable=False)
    except (OSError, UnicodeError):
        return  # a read-only home, a full disk: the preamble looks on PATH instead


def preamble_route(argv, build):
    """What the sh preamble does with a start: version | unpacked | archive (it answers, runs the unpacked
    copy, or hands the start to the archive's __main__), decided with the boot guard's own checks."""
    if argv == ["--version"]:
        return "version"
    homes = (os.environ.get("PILOT_HOME") or "~/.pilot", os.environ.get("SHIV_ROOT") or "~/.shiv")
    if not all(_sh_expands(path) for path in homes):
        return "archive"
    directory = extraction_dir(build["build_id"])
    warm = argv[:1] != ["self-update"] and not os.path.exists(trial_path()) and \
        os.path.isfile(os.path.join(directory, "__main__.py")) and extraction_complete(directory, build["build_id"])
    return "unpacked" if warm else "archive"


def _sh_expands(path):
    """Whether the preamble expands path as os.path.expanduser does: it knows ~ and ~/ with $HOME set only."""
    return not path.startswith("~") or ((path == "~" or path.startswith("~/")) and "HOME" in os.environ)


def started_from(main_file):
    """The archive this start belongs to: the zip __main__ was read from, or, when __main__.py sits in
    the unpacked copy (the preamble's fast path), the archive the preamble names. None: nobody named it."""
    here = os.path.dirname(os.path.abspath(main_file))
    if not os.path.isdir(here):
        return here
    named = os.environ.pop(ARCHIVE_ENV, None)
    return os.path.abspath(named) if named else None


def main(build, archive):
    if archive is None:
        say("pilot: this is the unpacked copy of a Pilot archive; run the archive itself")
        return 2
    problem = incompatibility(build)
    if problem is not None:  # before anything else: on the wrong interpreter nothing more may run
        if sys.argv[1:] == ["--version"]:
            print("pilot " + build["version"])
            return 0
        say(problem)
        return EXIT_INCOMPATIBLE
    runs_app = sys.argv[1:] != ["--version"] and recovery_command(sys.argv[1:]) is None
    return guard_boot(build, lambda: start_application(build, archive), archive, may_claim=runs_app)


def load_build(main_file, archive):
    """The build's metadata from the module beside __main__; None when it cannot be read (a damaged copy)."""
    here = os.path.dirname(os.path.abspath(main_file))
    if here not in sys.path:  # e.g. under -P: the archive or the copy is where the module is
        sys.path.insert(0, here)
    try:
        return __import__(BUILD_MODULE).PILOT_BUILD
    except (ImportError, AttributeError, SyntaxError):
        if archive is not None and archive != here:  # a damaged unpacked copy: the archive unpacks it again
            try:  # noqa: SIM105 (contextlib.suppress is not in Python 2, where this must still parse and run)
                os.unlink(os.path.join(here, COMPLETE_FILE))
            except OSError:
                pass
            os.execv(sys.executable, [sys.executable, archive] + sys.argv[1:])
        say("pilot: %s is damaged (its %s module is missing); download it again" % (here, BUILD_MODULE))
        sys.exit(1)


if __name__ == "__main__":
    PILOT_ARCHIVE = started_from(__file__)  # pilot.buildinfo reads it
    PILOT_BUILD = load_build(__file__, PILOT_ARCHIVE)  # and this
    sys.exit(main(PILOT_BUILD, PILOT_ARCHIVE))
