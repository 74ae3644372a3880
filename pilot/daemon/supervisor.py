"""The process a task runs under, so that a task dies with its daemon.

    python -I -S supervisor.py <daemon pid> <status fd> -- <command> [args...]

The daemon starts this file (standard library only, by path: no Pilot import, no site-packages)
as the leader of a new session and process group. It spawns the command into that group and
waits for it, mirroring its exit status (an exit code, or death by the same signal).

Why a separate process rather than `prctl(PR_SET_PDEATHSIG)` in a `preexec_fn`:

* `preexec_fn` runs Python between fork and exec in a child of a threaded daemon, which can
  deadlock (CPython warns against it); here the prctl happens in a fresh, single-threaded process;
* the death signal fires when the *thread* that forked exits, not the process: the daemon forks
  from the task's own thread, which lives until the task ends, so the signal means what we want;
* the death signal reaches only the direct child. This process stays to turn it into a stop of
  the whole group (the agent's tool subprocesses too): SIGTERM to the group, then SIGKILL after
  GRACE_SECONDS.

On Linux the kernel sends the death signal (SIGTERM) the moment the daemon dies; elsewhere
(macOS) the wait loop notices within POLL_SECONDS that its parent is no longer the daemon.
Once the daemon is gone, Pilot's next start still kills whatever is left of the group it
recorded (pilot.daemon.process.reap_group), for whatever escaped this.

The status fd tells the daemon whether the command could start: it is closed unread when it
did, or carries the errno of the failed spawn (the daemon raises it as the OSError it is).

A SIGTERM while the daemon lives is the daemon cancelling the task: the whole group got it, so
this process only keeps waiting for the command to end.
"""

import contextlib
import errno
import os
import select
import signal
import sys

GRACE_SECONDS = 5.0
POLL_SECONDS = 1.0
PR_SET_PDEATHSIG = 1
CANNOT_START = 127
# Python ignores these at startup; the command must find them as the system's defaults. (The ones this
# process handles, SIGCHLD and SIGTERM, are reset by exec itself.)
IGNORED_BY_PYTHON = (signal.SIGPIPE, signal.SIGXFSZ)


def parse(argv):
    """(daemon pid, status fd, command) from our own argv[1:]."""
    if len(argv) < 4 or argv[2] != "--":
        raise SystemExit("usage: supervisor.py DAEMON_PID STATUS_FD -- COMMAND [ARGS...]")
    return int(argv[0]), int(argv[1]), argv[3:]


def ask_for_death_signal():
    """Linux: have the kernel send SIGTERM when the daemon (the thread that forked us) dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # no libc symbol: the wait loop's parent check still works
        pass


def wake_on_signals():
    """SIGCHLD and SIGTERM only wake the wait loop (through a pipe): no handler ever runs our logic."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end)
    for signum in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    return read_end


def spawn(command, status_fd):
    """Start the command in our group with default signal dispositions; a failure is reported on status_fd.

    fork and exec, not posix_spawn: glibc's posix_spawn leaves its internal signals ignored in the new
    program. This process has one thread, so running Python between the two is safe here."""
    os.set_inheritable(status_fd, False)  # closed by a successful exec: its end is how the daemon knows
    child = os.fork()
    if child == 0:
        try:
            for signum in IGNORED_BY_PYTHON:
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            os.execvp(command[0], command)
        except OSError as error:
            os.write(status_fd, str(error.errno or errno.ENOEXEC).encode())
        finally:
            os._exit(CANNOT_START)
    os.close(status_fd)
    # Hold none of the task's pipes: the daemon sees the end of output when the command's side closes.
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    return child


def reaped(child):
    """The child's wait status if it has ended, else None."""
    pid, status = os.waitpid(child, os.WNOHANG)
    return status if pid == child else None


def wait_for(child, parent, wake_fd, until=None):
    """Wait for the child; returns its wait status, or None if the daemon died first (or `until` passed)."""
    import time

    while True:
        status = reaped(child)
        if status is not None:
            return status
        if until is None and os.getppid() != parent:
            return None
        timeout = POLL_SECONDS if until is None else until - time.monotonic()
        if until is not None and timeout <= 0:
            return None
        ready, _, _ = select.select([wake_fd], [], [], timeout)
        if ready:
            os.read(wake_fd, 512)


def stop_group(child, wake_fd):
    """The daemon is gone: SIGTERM the whole group, SIGKILL it after GRACE_SECONDS (this process too)."""
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    wait_for(child, None, wake_fd, until=time.monotonic() + GRACE_SECONDS)
    os.killpg(0, signal.SIGKILL)
    os._exit(128 + signal.SIGKILL)  # not reached: SIGKILL above included us


def exit_like(status):
    """End the way the command ended: its exit code, or death by its signal (without a core file)."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        os._exit(code)
    import resource

    signum = -code
    signal.set_wakeup_fd(-1)
    with contextlib.suppress(OSError, ValueError):  # SIGKILL cannot be caught: it is the default already
        signal.signal(signum, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # a signal that does not end a process by default


def main(argv):
    parent, status_fd, command = parse(argv)
    wake_fd = wake_on_signals()
    ask_for_death_signal()
    if os.getppid() != parent:  # the daemon died before we asked: do not start anything
        os._exit(128 + signal.SIGTERM)
    child = spawn(command, status_fd)
    status = wait_for(child, parent, wake_fd)
    if status is None:
        stop_group(child, wake_fd)
    exit_like(status)


if __name__ == "__main__":
    main(sys.argv[1:])
