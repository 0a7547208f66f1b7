"""``cascadeq bulk`` bodies: the progress line, ``--watch``, and the other subcommands."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from rq.exceptions import NoSuchJobError

from cascadeq.bulk import jobs
from cascadeq.config.settings import Settings
from cascadeq.protocol.errors import EXIT_FAILED, EXIT_UNKNOWN_ID, EXIT_USAGE

BAR = 30  # characters of the progress bar


def main(args: Any, settings: Settings) -> int:
    """``cascadeq bulk ...``; a missing job or input is one line on stderr, not a traceback."""
    try:
        return _dispatch(args, settings)
    except NoSuchJobError:
        return _fail(f"no bulk job {args.job_id} (never submitted, or expired)", EXIT_UNKNOWN_ID)
    except (FileNotFoundError, ValueError) as exc:
        return _fail(str(exc), EXIT_USAGE)


def _fail(message: str, code: int) -> int:
    print(f"cascadeq bulk: {message}", file=sys.stderr)
    return code


def _dispatch(args: Any, settings: Settings) -> int:
    command = args.bulk_command
    if command == "submit":
        return submit(args, settings)
    if command == "status":
        return status(args.job_id, settings, args.watch, args.json)
    if command == "cancel":
        return cancel(args.job_id, settings)
    if command == "retry":
        return retry(args.job_id, settings)
    return jobs.work(settings, burst=args.burst)


def line(state: dict[str, Any]) -> str:
    """``<id> started [#####.....] 2500/5000 50% 812 rows/s ETA 3s errors 0``."""
    done, total = state["done"], state["total"]
    if total:
        filled = BAR * done // total
        bar = f"[{'#' * filled}{'.' * (BAR - filled)}] {done}/{total} {100 * done // total}%"
    else:
        bar = f"[{'.' * BAR}] {done}/?"
    eta = "-" if state["eta_s"] is None else f"{state['eta_s']:.0f}s"
    text = (
        f"{state['id']} {state['status']} {bar} {state['rate']:.0f} rows/s ETA {eta} "
        f"errors {state['errors']}"
    )
    if state.get("error"):
        text += f" ({state['error']})"
    return text


def status(
    job_id: str, settings: Settings, watch: float | None, as_json: bool, out: TextIO = sys.stdout
) -> int:
    """One line, or with ``watch`` a redraw every ``watch`` s to the end; Ctrl-C leaves."""
    tty = out.isatty()
    try:
        state = jobs.progress(job_id, settings)
        while watch is not None and state["status"] not in jobs.ENDED:
            if not as_json:
                out.write(("\r" if tty else "") + line(state) + ("" if tty else "\n"))
                out.flush()
            time.sleep(watch)  # a refresh interval for a person, not synchronisation
            state = jobs.progress(job_id, settings)
    except KeyboardInterrupt:
        out.write("\n")
        return 0
    out.write(("\r" if tty and watch is not None else "") + _final(state, as_json) + "\n")
    return EXIT_FAILED if state["status"] in {"failed", "stopped", "canceled"} else 0


def _final(state: dict[str, Any], as_json: bool) -> str:
    return json.dumps(state) if as_json else line(state)


def submit(args: Any, settings: Settings) -> int:
    job_id = jobs.submit(
        args.input,
        task=args.task,
        output=args.output,
        tier=args.tier,
        settings=settings,
        result_ttl_s=args.result_ttl,
        failure_ttl_s=args.failure_ttl,
        job_timeout_s=args.job_timeout,
        in_flight=args.in_flight,
        rate=args.rate,
    )
    print(job_id)
    return 0


def cancel(job_id: str, settings: Settings) -> int:
    print(f"{job_id} {jobs.cancel(job_id, settings)}")
    return 0


def retry(job_id: str, settings: Settings) -> int:
    print(jobs.resubmit(job_id, settings))
    return 0
