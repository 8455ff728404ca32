"""Benchmarks of sagalease against raw SQL and other queues (issue 8); not part of the tests."""
