"""`indextts.scheduling.PriorityGate`: turns in order of urgency, pauses that let urgent work in."""

from __future__ import annotations

import threading
import time

import pytest

from indextts.scheduling import PriorityGate, current_turn


def _wait_for_waiters(gate: PriorityGate, n: int) -> None:
    for _ in range(1000):
        if gate.waiting() >= n:
            return
        time.sleep(0.002)
    raise AssertionError(f"{n} waiters never queued")


def test_waiters_get_the_slot_most_urgent_first_and_equal_keys_first_come():
    gate, order, release, held = PriorityGate(1), [], threading.Event(), threading.Event()

    def holder():
        with gate.turn(0):
            held.set()
            release.wait(5)

    def waiter(name, key):
        with gate.turn(key):
            order.append(name)

    first = threading.Thread(target=holder)
    first.start()
    held.wait(5)
    threads = []
    for name, key in [("late", 9.0), ("urgent", 1.0), ("tie-a", 5.0), ("tie-b", 5.0)]:
        threads.append(threading.Thread(target=waiter, args=(name, key)))
        threads[-1].start()
        _wait_for_waiters(gate, len(threads))
    release.set()
    for t in [first, *threads]:
        t.join(5)
    assert order == ["urgent", "tie-a", "tie-b", "late"]


def test_pause_hands_the_slot_to_a_more_urgent_waiter_only():
    gate, events = PriorityGate(1), []
    started = threading.Event()

    def long_work():
        with gate.turn(10.0) as turn:
            started.set()
            for piece in range(50):
                events.append(("long", piece))
                turn.pause()
                time.sleep(0.002)

    def urgent():
        with gate.turn(1.0):
            events.append(("urgent", 0))

    def later():
        with gate.turn(20.0):
            events.append(("later", 0))

    t = threading.Thread(target=long_work)
    t.start()
    started.wait(5)
    late = threading.Thread(target=later)
    late.start()
    _wait_for_waiters(gate, 1)
    u = threading.Thread(target=urgent)
    u.start()
    for th in (t, late, u):
        th.join(5)
    names = [name for name, _ in events]
    assert names.index("urgent") < names.index("later")          # it did not wait for the long work
    assert 0 < names.index("urgent") < names.count("long")        # it came in between pieces
    assert names[-1] == "later"                                   # less urgent: after the whole long work


def test_slots_bound_how_many_run_at_once():
    gate, lock, running, most = PriorityGate(2), threading.Lock(), [0], [0]

    def work():
        with gate.turn(time.time()):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.01)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert most[0] == 2


def test_outside_a_gate_pausing_does_nothing_and_a_turn_ends_with_its_block():
    current_turn().pause(3)                      # no gate: a no-op, no error
    gate = PriorityGate(1)
    with gate.turn(1.0, key_of=lambda left: 100 + left) as turn:
        assert current_turn() is turn
        turn.pause(5)
        assert turn.key == 105
    assert current_turn() is not turn
    with pytest.raises(ValueError):
        PriorityGate(0)


def test_a_reservation_holds_back_less_urgent_work_until_it_ends():
    gate, events = PriorityGate(1), []
    started, reserved, done = threading.Event(), threading.Event(), threading.Event()

    def less_urgent():
        with gate.turn(10.0) as turn:
            started.set()
            for piece in range(200):
                events.append("long")
                if done.is_set():
                    return
                turn.pause()
                time.sleep(0.001)

    t = threading.Thread(target=less_urgent)
    t.start()
    started.wait(5)
    with gate.reserve(5.0):
        reserved.set()
        time.sleep(0.05)                                  # the less urgent work is held at its pause
        before = len(events)
        time.sleep(0.05)
        held = len(events) == before
        with gate.turn(5.0):                              # work at the reservation's key goes on
            events.append("urgent")
    done.set()
    t.join(5)
    assert held and "urgent" in events and events[-1] == "long"


def test_a_cancelled_turn_raises_at_its_next_pause_and_frees_its_slot():
    from indextts.scheduling import WorkCancelled
    gate, cancelled = PriorityGate(slots=1), threading.Event()
    with gate.turn(1.0, cancelled=cancelled) as turn:
        turn.pause()                    # not cancelled: carries on
        cancelled.set()
        with pytest.raises(WorkCancelled):
            turn.pause()
    with gate.turn(2.0):                # the slot came back
        pass
