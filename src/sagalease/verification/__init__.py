"""Tools that check the lifecycle and what stores recorded.

Each reads the one declaration in :mod:`sagalease.lifecycle`:

- :mod:`~sagalease.verification.checker`: the explicit-state model checker
  (``sagalease check``);
- :mod:`~sagalease.verification.many`: the same over several tasks, queues and
  priorities (``sagalease check many``);
- :mod:`~sagalease.verification.history`: verifies recorded histories against
  the invariants (``sagalease verify``);
- :mod:`~sagalease.verification.invariants`: the invariants and their IDs;
- :mod:`~sagalease.verification.spec`: the generated spec (``sagalease spec``);
- :mod:`~sagalease.verification.simulate`: a fleet of real worker processes
  with faults, verified at the end (``sagalease simulate``).
"""
