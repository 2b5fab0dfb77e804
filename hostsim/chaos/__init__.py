"""Chaos runs: a shop of real processes, tills selling, and faults thrown at random."""
