"""The one primitive for handing work to an owner thread (daemon_app/mailbox.py), with real threads."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

from daemon_app.mailbox import Mailbox


class Closed(Exception):
    pass


def _owner(box: Mailbox, stop: threading.Event, ran: list[str]) -> threading.Thread:
    def loop() -> None:
        box.bind()
        while not stop.is_set():
            letter = box.take(0.05)
            if letter is not None:
                letter()
        box.close()

    thread = threading.Thread(target=loop, name="mailbox-owner", daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(20)
def test_letters_run_on_the_owner_in_order_and_call_returns_results_and_exceptions():
    box, stop, ran = Mailbox(Closed), threading.Event(), []
    owner = _owner(box, stop, ran)
    try:
        for i in range(50):
            box.post(lambda i=i: ran.append((i, threading.current_thread().name)))
        assert box.call(lambda: threading.current_thread().name, timeout=5) == "mailbox-owner"
        assert ran == [(i, "mailbox-owner") for i in range(50)]
        with pytest.raises(ZeroDivisionError):
            box.call(lambda: 1 / 0, timeout=5)
        # The owner calling into its own mailbox runs at once instead of waiting on itself.
        assert box.call(lambda: box.call(lambda: "inline", timeout=1), timeout=5) == "inline"
    finally:
        stop.set()
        owner.join(5)


@pytest.mark.timeout(20)
def test_a_closed_mailbox_answers_waiting_and_later_senders_with_its_error():
    box = Mailbox(lambda: Closed("stopped"))
    box.bind()  # this thread owns it but will never take the letter
    waiting: list[concurrent.futures.Future[int]] = []
    sender = threading.Thread(target=lambda: waiting.append(box.submit(lambda: 1)), daemon=True)
    sender.start()
    sender.join(5)
    box.close()
    with pytest.raises(Closed, match="stopped"):
        waiting[0].result(timeout=1)
    with pytest.raises(Closed):
        box.submit(lambda: 2).result(timeout=1)
    assert box.take(0) is None


@pytest.mark.timeout(20)
def test_wake_is_called_for_every_letter_and_take_zero_never_blocks():
    woken: list[int] = []
    box = Mailbox(Closed, wake=lambda: woken.append(1))
    assert box.take(0) is None and box.take(-1) is None
    box.post(lambda: None)
    box.submit(lambda: None)
    assert len(woken) == 2
    ran: list[str] = []
    box.post(lambda: ran.append("a"))
    box.post(lambda: 1 / 0)  # a failing letter is logged; the next one still runs
    box.post(lambda: ran.append("b"))
    box.run_pending()
    assert ran == ["a", "b"]


@pytest.mark.timeout(20)
def test_only_the_bound_thread_object_is_the_owner():
    box = Mailbox(Closed)
    box.bind()
    assert box.on_owner
    seen: list[bool] = []
    other = threading.Thread(target=lambda: seen.append(box.on_owner))
    other.start()
    other.join(5)
    assert seen == [False]
