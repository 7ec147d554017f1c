"""Why an LLM call did not give a usable answer: the loop rejects the round, or stops the run."""

from __future__ import annotations


class LLMError(RuntimeError):
    """One call failed (timeout, connection, bad reply); the round's proposal is rejected with this."""

    status: int | None = None  # the HTTP status when the server answered with an error


class LLMTimeout(LLMError):
    """A call hit its wall-clock limit; the stalled request was abandoned."""


class LLMFatal(RuntimeError):
    """Nothing later can succeed (no key, key refused, unknown model, no price for a cap): stop the run."""


class BudgetExceeded(LLMFatal):
    """A call was refused because its worst case could cross the USD cap."""
