"""Gate work that runs in a background thread and is collected by the test that reports it.

The gate's two slowest parts, the access matrices and the round-trip property, share
nothing with the other gate tests but the server: each has its own database copy and
its own connections, and spends most of its time waiting on PostgreSQL. Started when
the gate starts, they run while the other tests do; the test that reports one waits for
it and raises what it raised, so a failure reads as if it had happened in the test.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Background(Generic[T]):
    """``work()`` running in a daemon thread from construction; :meth:`result` waits for it."""

    def __init__(self, name: str, work: Callable[[], T]) -> None:
        self._work = work
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._work()
        except BaseException as exc:  # raised again by result(), in the thread that asks
            self._error = exc

    @property
    def running(self) -> bool:
        """Whether the work has not finished yet."""
        return self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the work has finished (or ``timeout`` seconds have passed)."""
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def result(self) -> T:
        """What the work returned, once finished; what it raised is raised here."""
        self.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set when the work returned
