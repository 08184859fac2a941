"""A reentrant lock that serves its waiters in the order they came (:class:`FairRLock`).

The model's lock (``MoEModel.lock``) is taken once per forward pass or generation. With
``threading.RLock`` a thread that releases it and asks again at once (a long search, pass
after pass) usually wins it back, and another request waits until the whole search is
done. First come, first served bounds that wait to the passes already in front of it.
"""

from __future__ import annotations

import collections
import threading
import time


class FairRLock:
    """A reentrant lock granted first come, first served (the ``threading.RLock`` API:
    ``acquire(blocking=True, timeout=-1)``, ``release()``, use as a context manager)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._count = 0
        self._waiting: collections.deque[object] = collections.deque()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock (again, from the thread that holds it); waiters are served in
        order. Returns False when ``blocking`` is off or ``timeout`` runs out first."""
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._count += 1
                return True
            if self._owner is None and not self._waiting:
                self._owner, self._count = me, 1
                return True
            if not blocking:
                return False
            ticket = object()
            self._waiting.append(ticket)
            end = None if timeout is None or timeout < 0 else time.monotonic() + timeout
            while self._owner is not None or self._waiting[0] is not ticket:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    self._waiting.remove(ticket)
                    self._cond.notify_all()  # the next in line may be free to go
                    return False
                self._cond.wait(left)
            self._waiting.popleft()
            self._owner, self._count = me, 1
            return True

    def release(self) -> None:
        """Release one level; the last release lets the first waiter in."""
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("cannot release a lock this thread does not hold")
            self._count -= 1
            if self._count == 0:
                self._owner = None
                self._cond.notify_all()

    def locked(self) -> bool:
        """Whether some thread holds the lock."""
        return self._owner is not None

    def __enter__(self) -> "FairRLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
