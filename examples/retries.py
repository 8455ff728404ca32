"""A flaky handler retried with backoff, then success (SQLite default, or a store URL).

    uv run python examples/retries.py              # ./sagalease-retries.db
    uv run python examples/retries.py memory://

The handler fails twice with a transient error: each time the worker releases the
lease with the retry policy's delay (the reason lands in the history), and the third
attempt completes the task.
"""

import sys
import uuid
from datetime import timedelta

from sagalease import LeaseContext, RetryPolicy, Worker, open_store

store = open_store(sys.argv[1] if len(sys.argv) > 1 else "sqlite:///sagalease-retries.db")
task_id = f"sync-{uuid.uuid4().hex[:8]}"
store.create(task_id, max_attempts=5)
calls = 0


def sync_inventory(ctx: LeaseContext) -> None:
    """Fail the first two calls as a flaky upstream would; then succeed."""
    global calls
    calls += 1
    if calls <= 2:
        raise ConnectionError(f"upstream timed out (call {calls})")
    print(f"attempt {ctx.task.attempts} synced {ctx.task_id} under token {ctx.token}")


worker = Worker(
    store,
    sync_inventory,
    retry=RetryPolicy(initial=timedelta(milliseconds=50), maximum=timedelta(seconds=1)),
    poll_interval=timedelta(milliseconds=20),
)
for outcome in worker.run(max_tasks=3):
    print(f"{outcome.result:<9} retry_in={outcome.retry_in}  {outcome.detail}")
for entry in store.history(task_id):
    delay = entry.args.get("delay_us") if entry.event == "release" else None
    extra = f" delay_us={delay}" if delay is not None else ""
    print(f"  {entry.seq}. {entry.event:<8} -> {entry.to_state:<9}{extra} {entry.reason or ''}")
store.close()
