"""The timed scenarios, one module each: switching (one change, no-op, reset), cycles (A -> B -> A error growth),
noop (re-running an unchanged stack at full size)."""
