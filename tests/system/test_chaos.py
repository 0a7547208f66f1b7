"""`cascadeq chaos`: its short form in CI, and the counting rules it relies on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import run_cli

from cascadeq.bench.tally import ACKED, REFUSED, UNKNOWN, Answers, Ledger
from cascadeq.chaos import ROLES, kill_plan
from cascadeq.protocol.messages import Result


def test_the_kill_plan_is_seeded_and_every_three_kills_cover_each_role() -> None:
    plan = kill_plan(8, seed=3)
    assert plan == kill_plan(8, seed=3)
    assert plan != kill_plan(8, seed=4)
    assert len(plan) >= 3
    assert sorted(role for _, role in plan[:3]) == sorted(ROLES)
    assert all(0 < at < 8 for at, _ in plan)
    assert [at for at, _ in plan] == sorted(at for at, _ in plan)


def test_a_failed_call_counts_as_accepted_only_if_redis_holds_the_request() -> None:
    ledger = Ledger()
    ledger.note("a", ACKED)
    ledger.note("lost-reply", UNKNOWN, "unknown:ConnectionError")
    ledger.note("never-reached", UNKNOWN, "unknown:ConnectionError")
    ledger.note("refused", REFUSED, "rejected:queue_full")
    held = {"lost-reply"}
    assert ledger.resolve(lambda ids: [i in held for i in ids]) == 1
    assert sorted(ledger.ids(ACKED)) == ["a", "lost-reply"]
    assert sorted(ledger.ids(REFUSED)) == ["never-reached", "refused"]


def test_only_differing_outputs_count_as_answered_twice_differently() -> None:
    answers = Answers()
    one = Result(id="r", status="ok", model="m", outputs={"p": np.array([[0.9, 0.1]])})
    again = Result(id="r", status="ok", model="m", outputs={"p": np.array([[0.9, 0.1]])})
    again.timings = {"total_ms": 5.0}  # a re-read or a re-publish: same answer
    answers.add(one)
    answers.add_raw(again.dumps())
    assert not answers.add_raw(b"\xc1")  # the "not ready" placeholder is no answer
    assert answers.twice_differently() == 0
    answers.add(Result(id="r", status="ok", model="m", outputs={"p": np.array([[0.2, 0.8]])}))
    assert answers.twice_differently() == 1


def test_short_chaos_run_loses_nothing_and_never_answers_twice(
    env: dict[str, str], digits_dir: Path
) -> None:
    done = run_cli(
        env, "chaos", "--seconds", "8", "--rate", "150", "--json", "--models-dir", str(digits_dir)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["lost"] == 0
    assert figures["answered_twice_differently"] == 0
    assert all(figures["kills"][role] >= 1 for role in ROLES), figures["kills"]
    assert figures["submitted"] == figures["accepted"] + figures["rejected"]
    assert figures["completed"] == figures["accepted"] > 0
    assert set(figures["peak_rss_mb"]) >= {"redis", "router", "worker", "driver"}
    assert "[chaos]" in done.stderr  # the progress line
