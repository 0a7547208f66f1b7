"""Total cost versus compute only, the pure parts: the CPU meter, the totals, the bench's
and the tools' figures, the targets, and the decisions that weigh a whole hop."""

from __future__ import annotations

import threading

import numpy as np

from cascadeq.bench import economics
from cascadeq.bench.harness import cpu_figures
from cascadeq.bench.suite import TARGETS, targets, verdict
from cascadeq.infra.cpu import CPU_FIELD, CpuMeter, Totals, role_figure
from cascadeq.infra.observed import ModelState
from cascadeq.ops import cost, published
from cascadeq.ops.calibration import Split
from cascadeq.ops.train_router import choose_threshold


def busy(n: int = 20_000) -> int:
    return sum(i * i for i in range(n))


def test_meter_publishes_nothing_until_a_batch_handled_requests() -> None:
    meter = CpuMeter()
    meter.mark(0)
    assert meter.fields() == {}
    busy()
    meter.mark(10)  # the first batch served: a warm-up, left out
    assert meter.fields() == {}
    busy()
    meter.mark(10)
    assert set(meter.fields()) == {CPU_FIELD}
    assert meter.us_per_request >= 0.0


def test_meter_drops_what_an_idle_loop_spent() -> None:
    helper = [0.0]
    meter = CpuMeter(helper=lambda: helper[0])
    meter.mark(1)  # warm-up
    helper[0] = 5.0  # seconds of idle polling by the reader
    meter.mark(0)  # the step found nothing
    helper[0] = 5.001
    meter.mark(10)
    assert meter.us_per_request < 5.0 / 10 * 1e6  # not the idle spell's 500,000 us


def test_meter_counts_its_helper_threads_share() -> None:
    helper = [0.0]
    meter = CpuMeter(helper=lambda: helper[0])
    meter.mark(1)  # warm-up
    helper[0] = 0.5  # the reader spent half a second since
    meter.mark(1000)
    assert meter.us_per_request >= 500.0  # 0.5 s over 1000 requests, at least


def test_meter_built_on_another_thread_starts_on_the_serving_one() -> None:
    meter = CpuMeter(helper=lambda: 99.0)  # a figure from before: not this thread's
    seen: list[dict[str, float]] = []

    def serve() -> None:
        meter.mark(5)  # first mark on this thread: a baseline, not a batch
        meter.mark(5)  # warm-up
        seen.append(meter.fields())
        meter.mark(5)
        seen.append(meter.fields())

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()
    assert seen[0] == {}
    assert set(seen[1]) == {CPU_FIELD}
    assert seen[1][CPU_FIELD] < 1e6  # not the 99 s it saw at the start


def test_role_figure_reads_bytes_and_ignores_junk() -> None:
    assert role_figure({b"cpu_us": b"12.5", b"at": b"1"}) == 12.5
    assert role_figure({"cpu_us": "x"}) is None
    assert role_figure({}) is None
    assert role_figure(None) is None


def test_totals_include_every_role_and_never_undercut_compute() -> None:
    t = Totals({"router": 10.0, "worker:a": 30.0}, 5.0, compute=20.0)
    doc = t.as_dict()
    assert doc["total_cpu_us"] == 45.0
    assert set(doc["roles_us"]) == {"router", "worker:a"}
    assert doc["total_cpu_us"] >= doc["compute_us"]
    assert Totals({}, None, compute=20.0).total == 20.0


def test_bench_cpu_figures_are_per_answered_request_with_every_role() -> None:
    spent = {"producer": 0.01, "router": 0.02, "worker": 0.05, "redis": 0.02}
    got = cpu_figures(spent, answered=1000, compute_us=3.5)
    assert set(got["roles_us"]) == {"producer", "router", "worker", "redis"}
    assert got["total_cpu_us"] == 100.0
    assert got["total_cpu_us"] >= got["compute_us"]
    assert cpu_figures({}, answered=1000, compute_us=3.5)["total_cpu_us"] is None


def test_model_state_adds_the_hop_beyond_compute_to_its_estimate() -> None:
    plain = ModelState(compute_ms=2.0, batch=10.0)
    hop = ModelState(compute_ms=2.0, batch=10.0, cpu_us=700.0)
    assert hop.compute_us == 200.0
    assert hop.hop_us == 500.0
    assert hop.est_latency_ms > plain.est_latency_ms
    assert ModelState().hop_us == 0.0


def test_published_totals_weigh_each_model_by_the_requests_it_handled() -> None:
    pub = published.Published(
        router_us=20.0,
        models={"s": published.ModelCpu(60.0, 1.0), "l": published.ModelCpu(90.0, 20.0)},
        redis_us=30.0,
        hops=1.2,
    )
    doc = {
        "s": {"processed_per_s": 10.0, "answered_per_s": 8.0, "samples_per_request": 1.0},
        "l": {"processed_per_s": 2.0, "answered_per_s": 2.0, "samples_per_request": 1.0},
    }
    t = published.totals(doc, pub)
    assert t is not None
    assert set(t.roles) == {"router", "worker:s", "worker:l"}
    assert t.roles["worker:s"] == 60.0  # 10 handled per 10 answered
    assert t.roles["worker:l"] == 18.0  # 2 per 10
    assert t.total == 20.0 + 60.0 + 18.0 + 30.0
    assert t.total >= t.compute == 1.0 + 4.0
    assert pub.hop_us("s") == 59.0 + 25.0  # beyond compute, plus Redis's share of a hop
    assert pub.hop_us("missing", fallback=7.0) == 7.0
    assert published.totals({"s": {"answered_per_s": 0.0}}, pub) is None


def test_a_skip_that_saves_a_whole_hop_is_worth_more_than_one_saving_compute() -> None:
    rng = np.random.default_rng(0)
    hard = (rng.random(400) < 0.15).astype(int)
    p_hard = np.clip(hard * 0.6 + rng.random(400) * 0.5, 0, 1)  # an imperfect predictor
    compute = choose_threshold(p_hard, hard, (0.28, 22.3), None)
    whole = choose_threshold(p_hard, hard, (0.28 + 60.0, 22.3 + 60.0), None)
    assert whole[4] >= compute[4]
    assert whole[3] >= compute[3]  # it skips at least as often


def test_calibration_weighs_reaching_a_stage_by_its_hop() -> None:
    conf = (np.array([0.9, 0.2, 0.8, 0.1]), np.ones(4))
    correct = (np.array([True, False, True, False]), np.ones(4, dtype=bool))
    compute = Split(conf, correct, costs=(1.0, 20.0)).evaluate([0.5])
    hopped = Split(conf, correct, costs=(1.0 + 50.0, 20.0 + 50.0)).evaluate([0.5])
    assert compute.relative_cost < hopped.relative_cost  # the first hop is not free


def test_targets_list_the_cascade_goals_even_when_not_measured() -> None:
    report = {"cascade": {"total_vs_large_only": 0.5, "accuracy_gap_points": 0.1}}
    got = {t["figure"]: t for t in targets(report)}
    assert got["cascade.total_vs_large_only"]["met"] is True
    assert got["cascade.local_escalated_p50_vs_queued"]["value"] is None
    assert got["cascade.local_escalated_p50_vs_queued"]["met"] is None
    paths = {t[0] for t in TARGETS}
    assert {"cascade.heavy_total_vs_large_only", "cascade.local_escalated_p50_vs_queued"} <= paths


def row(pair: str, way: str, total: float, compute: float) -> dict[str, object]:
    return {
        "pair": pair, "strategy": way, "available": True, "requests": 100, "accuracy": 0.98,
        "large_share": 1.0 if way == "large-only" else 0.15, "relative_cost": 0.2,
        "compute_us": compute, "total_cpu_us": total, "roles_us": {}, "throughput_rps": 100.0,
        "p50_ms": 1.0, "p99_ms": 2.0, "escalated": 0, "escalated_p50_ms": None,
        "escalated_p99_ms": None, "lost": 0,
    }  # fmt: skip


def test_economics_summary_without_local_escalation_says_so() -> None:
    rows = [
        row("digits", "large-only", 100.0, 22.0),
        row("digits", "cascade", 50.0, 3.0),
        {"pair": "digits", "strategy": "cascade-local", "available": False},
        row("heavy", "large-only", 300.0, 140.0),
        row("heavy", "cascade", 90.0, 21.0),
        {"pair": "heavy", "strategy": "cascade-local", "available": False},
    ]
    s = economics.summary(rows, {"rate_rps": 10.0, "queued_escalated_p50_ms": 5.0})
    assert s["total_vs_large_only"] == 0.5
    assert s["heavy_total_vs_large_only"] == 0.3
    assert s["local_available"] is False
    assert "local_total_vs_large_only" not in s
    assert "local_escalated_p50_vs_queued" not in s
    text = economics.render(rows)
    assert economics.NOT_AVAILABLE in text
    assert "total us" in text
    assert "compute us" in text


def test_cost_reads_total_and_compute_from_bench_rows_and_labels_both() -> None:
    doc = {
        "rows": [
            {"strategy": "large-only", "throughput_rps": 200.0, "total_cpu_us": 150.0,
             "compute_us": 22.3},
            {"strategy": "cascade", "throughput_rps": 600.0, "total_cpu_us": 90.0,
             "compute_us": 3.5},
        ],
    }  # fmt: skip
    m = cost.measured(doc)
    assert m.cpu_us["cascade"] == {"total": 90.0, "compute": 3.5}
    line = cost.cpu_line(m)
    assert "total 90.0 us" in line
    assert "compute only 3.5 us" in line


def test_cost_from_stats_estimates_large_only_from_published_figures() -> None:
    doc = {
        "models": {
            "s": {"processed_per_s": 10.0, "escalation_rate": 0.2, "cpu_us_per_request": 60.0,
                  "compute_us_per_sample": 0.3},
            "l": {"processed_per_s": 2.0, "escalation_rate": 0.0, "cpu_us_per_request": 80.0,
                  "compute_us_per_sample": 22.0},
        },
        "cost": {"total_cpu_us": 120.0, "compute_us": 4.7, "router_us": 20.0,
                 "redis_us": 24.0, "hops": 1.2},
    }  # fmt: skip
    m = cost.measured(doc)
    assert m.cpu_us["large-only"] == {"total": 80.0 + 20.0 + 20.0, "compute": 22.0}
    assert m.cpu_us["cascade"]["total"] == 120.0


def test_the_reachable_ratio_is_one_hops_floor_plus_the_escalated_share_of_large_compute() -> None:
    rows = [
        row("digits", "small-only", 40.0, 0.2),
        row("digits", "large-only", 100.0, 20.0),
        row("digits", "cascade", 70.0, 3.2),
    ]
    assert economics.reachable(rows, "digits") == round((40.0 + 0.15 * 20.0) / 100.0, 4)
    assert economics.reachable(rows[1:], "digits") is None  # no floor measured: no bound
    local = {"pair": "digits", "strategy": "cascade-local", "available": False}
    s = economics.summary([*rows, local])
    assert s["reachable_vs_large_only"] == 0.43
    assert "heavy_reachable_vs_large_only" not in s


def test_a_target_the_floor_puts_out_of_reach_says_so() -> None:
    report = {
        "cascade": {
            "total_vs_large_only": 0.9,
            "reachable_vs_large_only": 0.8,
            "heavy_total_vs_large_only": 0.3,
            "heavy_reachable_vs_large_only": 0.2,
        }
    }
    got = {t["figure"]: t for t in targets(report)}
    digits, heavy = got["cascade.total_vs_large_only"], got["cascade.heavy_total_vs_large_only"]
    assert (digits["met"], digits["reachable"], digits["goal_reachable"]) == (False, 0.8, False)
    assert (heavy["met"], heavy["goal_reachable"]) == (True, True)
    assert "OUT OF REACH" in verdict(digits)
    assert "within reach" in verdict(heavy)
    assert "reachable" not in got["cascade.accuracy_gap_points"]


def test_a_ways_row_is_its_median_round_with_every_rounds_total_beside_it() -> None:
    rounds = [row("digits", "cascade", t, 3.0) for t in (70.0, 50.0, 90.0)]
    got = economics.median_round(rounds)
    assert (got["total_cpu_us"], got["rounds"], got["total_cpu_us_rounds"]) == (
        70.0,
        3,
        [70.0, 50.0, 90.0],
    )
    two = economics.median_round(rounds[:2])
    assert two["total_cpu_us"] == 50.0  # the lower median: never a figure no round measured
    unmeasured = [{**r, "total_cpu_us": None} for r in rounds]
    assert economics.median_round(unmeasured)["total_cpu_us"] is None
