"""Bulk jobs: a whole file scored through the queue on a low lane, its life cycle in rq.

A tool layer (beside cascadeq.ops): it drives the public client, cascadeq.producer, and
nothing below imports it. rq runs with its JSON serializer: job arguments are paths and
strings, never pickles.
"""

from cascadeq.bulk.jobs import QUEUE, cancel, fetch, progress, resubmit, submit

__all__ = ["QUEUE", "cancel", "fetch", "progress", "resubmit", "submit"]
