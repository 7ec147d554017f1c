"""Controller specs: ``name:k=v,...`` for built-ins, ``path/to/file.py:ClassName`` for user code.

A spec is parsed once in the parent and again, from its text, in each worker process, so
everything needed to rebuild a controller travels as a string.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ttsgym.controllers.base import Controller, spec_string

_BUILTIN_MODULES = ("ttsgym.controllers.baselines", "ttsgym.controllers.family")


def builtins() -> dict[str, type[Controller]]:
    """Built-in controllers by name: baselines first, then the project's β-families."""
    found: dict[str, type[Controller]] = {}
    for module_name in _BUILTIN_MODULES:
        module = importlib.import_module(module_name)
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, Controller) and obj.__module__ == module_name
                    and "name" in vars(obj)):
                found[obj.name] = obj
    return found


def list_controllers() -> list[dict[str, Any]]:
    return [{"name": c.name, "kind": c.kind, "description": c.summary,
             "parameters": dict(c.defaults)} for c in builtins().values()]


@dataclass(frozen=True)
class ControllerSpec:
    """A parsed spec: how to build the controller for a given β, and how to label it."""

    text: str
    name: str
    kind: str
    cls: type
    params: tuple[tuple[str, Any], ...] = ()
    user_file: bool = False

    @property
    def takes_beta(self) -> bool:
        return self.kind == "beta-family" or self.user_file

    def make(self, beta: float | None = None) -> Any:
        if self.user_file:
            return self.cls(config={"beta": beta}) if beta is not None else self.cls()
        params = dict(self.params)
        if beta is not None and self.kind == "beta-family":
            params["beta"] = beta
        return self.cls(**params)


def parse_spec(text: str) -> ControllerSpec:
    """Parse ``sc:n=64``, ``parallel_probe:T=40,...`` or ``path/to/file.py:ClassName``."""
    head, sep, tail = text.partition(":")
    if head.endswith(".py"):
        if not sep or not tail.isidentifier():
            raise ValueError(f"controller {text!r}: write path/to/file.py:ClassName")
        cls = load_user_class(Path(head), tail)
        kind = getattr(cls, "kind", "user")
        return ControllerSpec(text=text, name=tail, kind=kind if kind == "beta-family" else "user",
                              cls=cls, user_file=True)
    table = builtins()
    if head not in table:
        raise ValueError(f"unknown controller {head!r}; built-ins: {', '.join(table)} "
                         "(or path/to/file.py:ClassName)")
    cls = table[head]
    params: dict[str, Any] = {}
    for item in filter(None, tail.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"controller {text!r}: parameter {item!r} is not key=value")
        params[key.strip()] = value.strip()
    if cls.kind == "beta-family" and "beta" in params:
        raise ValueError(f"controller {text!r}: give β with --beta, not in the spec")
    probe = cls(**params)  # validates names and types now, in the parent
    canonical = {k: v for k, v in probe.params.items() if k != "beta"}
    return ControllerSpec(text=spec_string(head, canonical, cls.defaults), name=head, kind=cls.kind,
                          cls=cls, params=tuple(canonical.items()))


def load_user_class(path: Path, class_name: str) -> type:
    """Import ``class_name`` from a Python file; errors name the file and what is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such controller file")
    resolved = path.resolve()
    module_name = "ttsgym_user_" + hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, resolved)
        if spec is None or spec.loader is None:
            raise ImportError(f"{path}: cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise AttributeError(f"{path}: defines no class {class_name!r}")
    if not callable(getattr(cls, "solve", None)):
        raise TypeError(f"{path}: class {class_name} has no solve(question) method")
    return cls
