"""Ctrl-C as a request to stop cleanly: ``lopt train`` finishes the outer step, saves, and exits."""

from __future__ import annotations

import signal
import sys
import threading


class InterruptFlag:
    """Turns SIGINT into a flag checked between outer steps (main thread only).

    ``lopt train`` enters it before reading the config, so a Ctrl-C during a
    compile is only noted; a second Ctrl-C gives up at once.
    """

    def __init__(self, announce: bool = True):
        self.raised = False
        self.announce = announce
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.raised:  # second Ctrl-C: give up immediately
            raise KeyboardInterrupt
        self.raised = True
        if self.announce:
            print("lopt train: stopping at the next outer step (Ctrl-C again to abort now)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False
