"""Turns per key: one holder at a time, given back from any thread, nothing kept for keys no one holds."""

from __future__ import annotations

import threading
import time

from livedm.server.turns import Turns


def test_one_holder_per_key_and_the_next_gets_it_when_given_back() -> None:
    turns = Turns()
    turns.take("s1")
    got: list[float] = []
    waiter = threading.Thread(target=lambda: (turns.take("s1"), got.append(time.monotonic())))
    waiter.start()
    time.sleep(0.2)
    assert got == [], "a second holder of one key waits"
    given_back_at = time.monotonic()
    turns.give_back("s1")
    waiter.join(5)
    assert got and got[0] >= given_back_at
    turns.give_back("s1")
    assert turns.held() == 0


def test_other_keys_do_not_wait() -> None:
    turns = Turns()
    turns.take("s1")
    other = threading.Thread(target=lambda: (turns.take("s2"), turns.give_back("s2")))
    other.start()
    other.join(5)
    assert not other.is_alive()
    assert turns.held() == 1
    turns.give_back("s1")


def test_a_turn_may_be_given_back_by_another_thread() -> None:
    """A walk's state is written on the writer's thread, which gives the session's turn back."""
    turns = Turns()
    turns.take("s1")
    giver = threading.Thread(target=turns.give_back, args=("s1",))
    giver.start()
    giver.join(5)
    turns.take("s1")  # would block for ever were the turn still held
    turns.give_back("s1")
    assert turns.held() == 0


def test_many_threads_on_one_key_never_overlap_and_leave_nothing_behind() -> None:
    turns = Turns()
    inside, most = [0], [0]
    lock = threading.Lock()

    def hold() -> None:
        for _ in range(200):
            turns.take("s1")
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            with lock:
                inside[0] -= 1
            turns.give_back("s1")

    threads = [threading.Thread(target=hold) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert most[0] == 1
    assert turns.held() == 0
