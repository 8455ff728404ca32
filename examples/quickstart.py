"""Ten lines of sagalease: lease a task, lose it to a crash, fence the zombie."""

from datetime import UTC, datetime, timedelta

from sagalease import Compensation, LeaseConflictError, open_store

store = open_store("memory://")
t0 = datetime.now(UTC)
store.create("charge-42", compensations=[Compensation("refund", "order-42")], now=t0)
a = store.claim_next(owner="worker-a", ttl=timedelta(seconds=30), now=t0)
assert a is not None  # worker-a now holds token 1 ... and then stalls past its lease
b = store.claim_next(owner="worker-b", ttl=timedelta(seconds=30), now=t0 + timedelta(seconds=31))
assert b is not None and b.token == 2
try:
    store.complete("charge-42", owner="worker-a", token=1, now=t0 + timedelta(seconds=32))
except LeaseConflictError as exc:
    print("zombie fenced:", exc)
task = store.fail("charge-42", owner="worker-b", token=2, reason="card declined", now=t0 + timedelta(seconds=33))
print(task.state, "owes", [c.kind for c in task.compensations])
