"""`PriorityGate`: CPU-bound work of many requests taken in turns, most urgent first.

Threads doing GIL-bound or core-bound work (grammar transducers, decode steps on a CPU) gain
nothing from running together, and running together makes every request as slow as the slowest
mix. A gate lets `slots` threads run at a time; a thread gives its slot back between pieces of its
work (`Turn.pause`), and the waiting thread with the smallest key goes next (ties: first come). So
a short or urgent request waits for at most one piece of each running request, not for their
whole inputs.

    gate = PriorityGate(slots=1)
    with gate.turn(key):            # key: smaller is more urgent (a deadline, a remaining length)
        for piece in work:
            do(piece)
            current_turn().pause()  # anyone more urgent goes first

`current_turn()` is the calling thread's turn (a no-op turn outside any gate), so code deep in a
call can offer its slot without being handed the gate.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional


class WorkCancelled(Exception):
    """Raised at a `Turn.pause` once the work's caller has given up on it (e.g. a client left)."""


class PriorityGate:
    def __init__(self, slots: int = 1):
        if slots < 1:
            raise ValueError(f"a gate needs at least one slot, got {slots}")
        self.slots = slots
        self._lock = threading.Lock()
        self._running = 0
        # heap of (key, order, wake-up, whether reservations hold it back)
        self._waiting: list[tuple[float, int, threading.Event, bool]] = []
        self._order = itertools.count()
        self._reserved: list[float] = []  # keys of `reserve` blocks in progress

    def _blocked(self, key: float) -> bool:
        """A reservation more urgent than `key` holds it back (lock held)."""
        return bool(self._reserved) and min(self._reserved) < key

    def _acquire(self, key: float, held_back: bool = True) -> None:
        wake = threading.Event()
        with self._lock:
            heapq.heappush(self._waiting, (key, next(self._order), wake, held_back))
            self._hand_over()             # at once if a slot is free and nothing more urgent waits
        wake.wait()

    def _release(self) -> None:
        with self._lock:
            self._running -= 1
            self._hand_over()

    def _hand_over(self) -> None:
        """Free slots go to the most urgent waiters that no reservation holds back (lock held)."""
        held: list = []
        while self._running < self.slots and self._waiting:
            entry = heapq.heappop(self._waiting)
            if entry[3] and self._blocked(entry[0]):
                held.append(entry)
                continue
            self._running += 1
            entry[2].set()
        for entry in held:
            heapq.heappush(self._waiting, entry)

    def _should_pause(self, key: float, held_back: bool) -> bool:
        with self._lock:
            return (bool(self._waiting) and self._waiting[0][0] < key) or (held_back and self._blocked(key))

    @contextmanager
    def reserve(self, key: float) -> Iterator[None]:
        """For the block, work less urgent than `key` waits at its next pause, so that this
        urgent work (e.g. a request's first audio) has the cores and the GIL to itself, event-loop
        hops included, not just the gate's turns. Work at `key` or more urgent goes on."""
        with self._lock:
            self._reserved.append(key)
        try:
            yield
        finally:
            with self._lock:
                self._reserved.remove(key)
                self._hand_over()

    @contextmanager
    def turn(self, key: float, key_of: Optional[Callable[[float], float]] = None,
             held_back: bool = True, cancelled: Optional[threading.Event] = None) -> Iterator["Turn"]:
        """Hold a slot for the block (waiting for one first); `Turn.pause()` inside gives it
        back to a more urgent waiter and waits for it again. `key_of` maps what `pause(left)`
        reports (e.g. characters left) to a new key. `held_back=False`: reservations do not hold
        this turn back (work that urgent work may queue behind, such as a batch call). Once
        `cancelled` is set, the next `pause()` raises `WorkCancelled`."""
        self._acquire(key, held_back)
        turn = Turn(self, key, key_of, held_back, cancelled)
        outer, _local.turn = getattr(_local, "turn", None), turn
        try:
            yield turn
        finally:
            _local.turn = outer
            self._release()

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)


class Turn:
    """One thread's hold on a gate slot."""

    def __init__(self, gate: Optional[PriorityGate], key: float,
                 key_of: Optional[Callable[[float], float]] = None, held_back: bool = True,
                 cancelled: Optional[threading.Event] = None):
        self.gate, self.key, self.key_of, self.held_back = gate, key, key_of, held_back
        self.cancelled = cancelled

    def pause(self, left: Optional[float] = None) -> None:
        """Let a more urgent waiter run first (then wait for a slot again); `left` (work left,
        through the turn's `key_of`) updates this turn's urgency. Costs a lock check when nobody
        more urgent waits. Raises `WorkCancelled` once the turn's `cancelled` event is set."""
        if self.cancelled is not None and self.cancelled.is_set():
            raise WorkCancelled("the caller gave up on this work")
        if left is not None and self.key_of is not None:
            self.key = self.key_of(left)
        if self.gate is not None and self.gate._should_pause(self.key, self.held_back):
            self.gate._release()
            self.gate._acquire(self.key, self.held_back)


_local = threading.local()
_NO_TURN = Turn(None, 0.0)


# A request's first audio is scheduled as if due this long before the request arrived: nothing is
# felt more than the wait for first audio, so that work goes ahead of audio that is merely late.
FIRST_AUDIO_LEAD_S = 30.0

_CPU_GATE = PriorityGate(slots=1)


def cpu_gate() -> PriorityGate:
    """The process's gate for CPU-bound work (text normalisation, and decode steps and vocoder
    calls on a CPU): stages in one process share the cores and the GIL, so they take turns by
    deadline instead of slowing each other down (a GIL handed between threads at every operation,
    or held through a transducer call, costs each of them milliseconds)."""
    return _CPU_GATE


def current_turn() -> Turn:
    """The calling thread's turn, or a turn whose `pause` does nothing outside any gate."""
    return getattr(_local, "turn", None) or _NO_TURN
