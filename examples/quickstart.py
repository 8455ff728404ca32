"""sagalease on the embedded SQLite default: lease, stall, get fenced, compensate.

Run it as often as you like: each run adds one saga to ./sagalease-quickstart.db.
"""

import uuid
from datetime import UTC, datetime, timedelta

from sagalease import Compensation, LeaseConflictError, open_store

store = open_store("sqlite:///sagalease-quickstart.db")
task_id = f"charge-{uuid.uuid4().hex[:8]}"
t0 = datetime.now(UTC)
ttl = timedelta(seconds=30)
store.create(task_id, compensations=[Compensation("refund", "order-42")], now=t0)
a = store.acquire(task_id, owner="worker-a", ttl=ttl, now=t0)
print(f"worker-a holds {task_id} with token {a.token} ... then stalls past its lease")
b = store.acquire(task_id, owner="worker-b", ttl=ttl, now=t0 + timedelta(seconds=31))
print(f"worker-b took it over with token {b.token} (expirations: {b.expirations})")
try:
    store.complete(task_id, owner="worker-a", token=a.token, now=t0 + timedelta(seconds=32))
except LeaseConflictError as exc:
    print(f"zombie worker-a fenced: {exc}")
failed = store.fail(
    task_id, owner="worker-b", token=b.token, reason="card declined", now=t0 + timedelta(seconds=33)
)
print(f"worker-b failed it: {failed.state}, owing {[c.kind for c in failed.compensations]}")
c = store.acquire(task_id, owner="worker-c", ttl=ttl, now=t0 + timedelta(seconds=34))
done = store.compensation_applied(
    task_id, owner="worker-c", token=c.token, index=0, now=t0 + timedelta(seconds=35)
)
print(f"worker-c applied the refund: {done.state} ({done.terminal_reason})")
for entry in store.history(task_id):
    print(
        f"  {entry.seq}. {entry.event:<21} {entry.from_state or '-':>12} -> {entry.to_state:<12}"
        f" {entry.owner or ''} {entry.reason or ''}"
    )
print("tasks per state in the file:", {s.value: n for s, n in store.counts().items() if n})
store.close()
