from __future__ import annotations

from cascadeq.producer.inbox import UNCLAIMED_CAP, Inbox
from cascadeq.protocol.messages import Result


def res(rid: str) -> Result:
    return Result(id=rid, status="ok")


def test_a_result_reaches_every_waiter_and_a_second_delivery_is_harmless() -> None:
    inbox = Inbox()
    first = inbox.register(["a", "b"])
    second = inbox.register(["a"])
    assert inbox.outstanding() == ["a", "b"]
    inbox.deliver(res("a"))
    inbox.deliver(res("a"))  # the listener and a waiter's MGET both found it
    assert second.done()
    assert second.future.done()
    assert not first.done()
    assert first.results["a"].id == "a"
    assert inbox.outstanding() == ["b"]  # answered: the sweep no longer fetches it
    inbox.release(second, ["a"])
    inbox.deliver(res("b"))
    assert first.future.done()
    assert inbox.take("a") is None  # a second delivery was not buffered as unclaimed
    inbox.release(first, ["a", "b"])
    assert not inbox.register(["a"]).done()  # gone once both left


def test_results_nobody_waits_for_are_buffered_boundedly_and_taken_once() -> None:
    inbox = Inbox()
    for i in range(UNCLAIMED_CAP + 5):
        inbox.deliver(res(f"r{i}"))
    assert inbox.take("r0") is None  # the oldest were dropped
    found = inbox.take(f"r{UNCLAIMED_CAP}")
    assert found is not None
    assert inbox.take(f"r{UNCLAIMED_CAP}") is None
    batch = inbox.register([f"r{UNCLAIMED_CAP + 1}", "later"])
    assert list(batch.results) == [f"r{UNCLAIMED_CAP + 1}"]
    assert inbox.outstanding() == ["later"]


def test_forged_messages_are_dropped_and_subscriptions_ask_for_a_sweep() -> None:
    inbox = Inbox()
    assert inbox.on_message({"type": "subscribe", "data": 1}) is True
    assert inbox.on_message({"type": "message", "data": b"\xc1"}) is False
    assert inbox.on_message({"type": "message", "data": res("ok").dumps()}) is False
    assert inbox.take("ok") is not None


def test_ids_submitted_under_the_live_subscription_need_no_look_until_delivered() -> None:
    inbox = Inbox()
    assert inbox.listening() is None  # no listener yet: a submit now is not heard for sure
    inbox.expect(["early"], inbox.listening())
    assert inbox.on_message({"type": "subscribe", "data": 1})  # confirmed: epoch 1
    epoch = inbox.listening()
    assert epoch is not None
    inbox.expect(["a", "b", "c"], epoch)
    inbox.register(["early", "a", "b", "c", "theirs"])
    assert inbox.unheard(["early", "a", "b", "c", "theirs"]) == ["early", "theirs"]
    inbox.deliver_many([res("a")])
    inbox.deliver(res("b"))
    assert inbox.unheard(["a", "b", "c"]) == ["a", "b"]  # delivered once: a new wait looks


def test_a_lost_subscription_sends_every_wait_to_look() -> None:
    inbox = Inbox()
    inbox.subscribed()
    inbox.expect(["a"], inbox.listening())
    inbox.lost()
    assert inbox.listening() is None
    assert inbox.unheard(["a"]) == ["a"]  # its publication may have gone while lost
    inbox.subscribed()  # a new subscription, a new epoch: "a" was submitted under the old
    assert inbox.unheard(["a"]) == ["a"]
    assert not inbox._expected  # and its record is gone: a lost result leaves nothing behind
    inbox.expect(["b"], inbox.listening())
    assert inbox.unheard(["a", "b"]) == ["a"]


def test_ids_of_a_refused_call_are_forgotten() -> None:
    inbox = Inbox()
    inbox.subscribed()
    inbox.expect(["a", "b"], inbox.listening())
    inbox.forget(["a", "b"])  # the call was refused: a wait on either looks in Redis
    assert inbox.unheard(["a", "b"]) == ["a", "b"]
