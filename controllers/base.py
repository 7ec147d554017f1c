"""What a controller is (DESIGN §4): parameters in, ``solve(question) -> answer`` out.

Baselines take named parameters (``SelfConsistency(n=16)``). β-family controllers take one
knob ``beta`` in [0, 1]; their ``schedule(beta)`` derives every internal parameter, monotone so
that a larger β spends more. Both accept ``config={...}`` like AutoTTS controllers do.
"""

from __future__ import annotations

from typing import Any, ClassVar


class Controller:
    """Base class of the built-in controllers.

    Subclasses declare ``name``, ``summary`` and ``defaults`` (parameter → default value; the
    default's type is the parameter's type) and implement :meth:`solve`.
    """

    name: ClassVar[str] = "controller"
    kind: ClassVar[str] = "baseline"
    summary: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: dict[str, Any] | None = None, **params: Any) -> None:
        given = {**(config or {}), **params}
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            valid = ", ".join(self.defaults) or "none"
            raise TypeError(f"{self.name}: unknown parameter(s) {', '.join(unknown)}; valid: {valid}")
        self.params: dict[str, Any] = {}
        for key, default in self.defaults.items():
            value = given.get(key, default)
            self.params[key] = _coerce(self.name, key, value, type(default))
        self.config = dict(self.params)

    def solve(self, question: Any) -> str | None:
        raise NotImplementedError

    def description(self) -> str:
        return spec_string(self.name, self.params, self.defaults)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


class BetaController(Controller):
    """A controller family with a single knob β in [0, 1] (larger spends more)."""

    kind: ClassVar[str] = "beta-family"
    defaults: ClassVar[dict[str, Any]] = {"beta": 0.5}

    def __init__(self, config: dict[str, Any] | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.beta = self.params["beta"]
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"{self.name}: beta must be in [0, 1], got {self.beta}")
        self.hp = self.schedule(self.beta)

    @classmethod
    def schedule(cls, beta: float) -> dict[str, Any]:
        """Every internal hyper-parameter as a function of β."""
        raise NotImplementedError


def _coerce(name: str, key: str, value: Any, kind: type) -> Any:
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    try:
        if kind is int:
            number = float(value)
            if number != int(number):
                raise ValueError
            return int(number)
        if kind is float:
            return float(value)
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes"):
                    return True
                if value.lower() in ("0", "false", "no"):
                    return False
                raise ValueError
            return bool(value)
        return kind(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: parameter {key} must be {kind.__name__}, got {value!r}") from None


def spec_string(name: str, params: dict[str, Any], defaults: dict[str, Any]) -> str:
    """``name:k=v,...`` listing the parameters that differ from the defaults."""
    changed = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
               for k, v in params.items() if defaults.get(k) != v]
    return f"{name}:{','.join(changed)}" if changed else name
