"""Interrupts of the ``simgen`` program: Ctrl-C and SIGTERM stop any stage promptly and cleanly.

Ctrl-C (SIGINT) and SIGTERM raise :class:`KeyboardInterrupt` / :class:`Terminated` in the main thread, so
every ``finally`` block runs (worker pools killed, temporary folders removed); the program then exits at
once with 130 / 143 (:func:`exit_now`) instead of paying for the interpreter's teardown of the loaded
extension modules (2-3 s after an export). A watchdog thread ends the process if the main thread is still
busy ``FORCED_EXIT_S`` after the signal (stuck inside one long C call, e.g. a CoACD decomposition, which
Python cannot interrupt), first running the callbacks registered with :func:`on_forced_exit`.

Library code registers what must not be left behind with :func:`on_forced_exit` and protects what an
interrupt is meant to keep with :func:`postpone_forced_exit`; only the ``simgen`` program installs the
handlers (:func:`install_signal_handling`), a Python caller's own handling is left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

# After SIGINT / SIGTERM the main thread gets this long to unwind before the watchdog ends the process
# (the bound for stopping any stage is 2 s).
FORCED_EXIT_S = 1.5
# Longest a postpone_forced_exit() block can hold the forced exit off.
POSTPONE_MAX_S = 30.0
# At exit, how long the other threads may take to finish what they are in (see exit_now), seconds.
EXIT_JOIN_S = 0.3


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C (a KeyboardInterrupt, so no ``except Exception``
    swallows it and every handler that cleans up after Ctrl-C cleans up after SIGTERM too)."""


_cleanups: dict[int, Callable[[], None]] = {}
_cleanups_lock = threading.Lock()
# Set once main() has returned or raised: the watchdog then leaves the (slow but orderly) exit alone.
finished = threading.Event()
_postponed = 0  # open postpone_forced_exit() blocks


@contextlib.contextmanager
def on_forced_exit(fn: Callable[[], None]) -> Iterator[None]:
    """Within the block, ``fn`` runs if the watchdog has to end the process (the main thread's own
    ``finally`` blocks cannot run then). Use it for what a later run would not clean up by itself."""
    with _cleanups_lock:
        key = id(fn)
        _cleanups[key] = fn
    try:
        yield
    finally:
        with _cleanups_lock:
            _cleanups.pop(key, None)


@contextlib.contextmanager
def postpone_forced_exit() -> Iterator[None]:
    """Hold the watchdog's forced exit off while the block runs (at most POSTPONE_MAX_S after the signal):
    for saving what an interrupt is meant to keep, e.g. the neural builder's checkpoint on Ctrl-C."""
    global _postponed
    with _cleanups_lock:
        _postponed += 1
    try:
        yield
    finally:
        with _cleanups_lock:
            _postponed -= 1


def _on_signal(signum: int, frame) -> None:
    # Only the first signal interrupts: a second Ctrl-C must not abort the cleanup the first one started
    # (the watchdog bounds how long that cleanup may take).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _watchdog(read_fd: int) -> None:
    """Wait for SIGINT / SIGTERM (bytes on the signal wakeup fd, written by the C-level handler even while
    the main thread is inside a C call); if the process is still alive FORCED_EXIT_S later, clean up and exit."""
    wanted = {int(signal.SIGINT), int(signal.SIGTERM)}
    while True:
        try:
            got = set(os.read(read_fd, 64))
        except OSError:
            return
        hits = got & wanted
        if not hits:
            continue
        if finished.wait(FORCED_EXIT_S):
            return
        deadline = time.monotonic() + POSTPONE_MAX_S - FORCED_EXIT_S
        while _postponed and time.monotonic() < deadline:
            if finished.wait(0.1):
                return
        code = 143 if int(signal.SIGTERM) in hits else 130
        with _cleanups_lock:
            fns = list(_cleanups.values())
        for fn in fns:
            with contextlib.suppress(Exception):
                fn()
        with contextlib.suppress(Exception):
            os.write(2, b"interrupted (forced exit: the running stage did not stop in time)\n")
        os._exit(code)


def install_signal_handling() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _on_signal)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # a background job of a script ignores it
        signal.signal(signal.SIGINT, _on_signal)
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    threading.Thread(target=_watchdog, args=(r,), name="simgen-watchdog", daemon=True).start()

    def in_child() -> None:
        # A forked child (simgen serve's workers) inherits the wakeup fd but not the watchdog: a signal to
        # the child must not reach the parent's watchdog through the shared pipe.
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)
            os.close(r)
            os.close(w)

    os.register_at_fork(after_in_child=in_child)


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown: cleanup already ran in the unwound ``finally`` blocks.
    multiprocessing's own exit hook still runs (it is what removes its pymp-* temp folder and unlinks the
    semaphores of a killed worker pool, which the resource tracker would otherwise report as leaked)."""
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        with contextlib.suppress(Exception):
            mp_util._exit_function()
        # A worker pool's queues may be collected in one of the pool's own threads, which then runs their
        # semaphores' finalizers (unlink, then unregister with the resource tracker) while this thread
        # exits; cut off in between, the tracker reports a leaked semaphore. Give those threads a moment.
        deadline = time.monotonic() + EXIT_JOIN_S
        for t in threading.enumerate():
            if t is not threading.current_thread() and t.name != "simgen-watchdog":
                with contextlib.suppress(RuntimeError):
                    t.join(max(0.0, deadline - time.monotonic()))
    logging.shutdown()
    for f in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            f.flush()
    os._exit(code)
