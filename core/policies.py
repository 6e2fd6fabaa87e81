"""Timeouts and retry policies, named per kind of dependency, shared by every workflow (the
stage bookkeeping behind each workflow's ``progress`` query is workflows/stages.py)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

from core.activity import ActivityPolicy

# Postgres writes and reads: quick and safe to retry.
DB_TIMEOUT = timedelta(seconds=30)
DB_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=10))
# Payment and billing services (Stripe, Lago): slower, rate limited; refusals are non-retryable by type.
BILLING_TIMEOUT = timedelta(seconds=60)
BILLING_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=2))
# CrewAI crews (agents queue): long, heartbeating; a tenant over budget or invalid output is final.
CREW_TIMEOUT = timedelta(minutes=15)
CREW_HEARTBEAT = timedelta(seconds=30)
CREW_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_attempts=3,
                         non_retryable_error_types=["AIBudgetExceeded", "InvalidLLMOutput"])

# The same, as the policies activity classes declare (core.activity).
DB = ActivityPolicy(start_to_close=DB_TIMEOUT, retry=DB_RETRY)
BILLING = ActivityPolicy(start_to_close=BILLING_TIMEOUT, retry=BILLING_RETRY)
CREW = ActivityPolicy(start_to_close=CREW_TIMEOUT, heartbeat=CREW_HEARTBEAT, retry=CREW_RETRY)
