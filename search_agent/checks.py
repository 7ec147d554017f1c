"""Static checks on candidate code: the cheap early filter before anything runs.

They parse the module and refuse what the contract (:mod:`ttsgym.search_agent.contract`) forbids:
imports outside the allow-list, private/dunder attribute access, string-keyed attribute access,
reaching a forbidden module through an allowed one (``statistics.sys``), file I/O handles,
module-level side effects; and they find the controller class. They are a filter, not the
guarantee: Python offers channels no parser sees (strings built at run time, for one), which is
why every candidate that runs is also audited for non-anticipation.
"""

from __future__ import annotations

import ast
import importlib
import re
import types
from dataclasses import asdict, dataclass, field
from typing import Any

from ttsgym.search_agent.contract import (
    ALLOWED_MODULES,
    FORBIDDEN_ATTRIBUTES,
    FORBIDDEN_NAMES,
    PURE_BUILTINS,
)

_FORMAT_FIELD = re.compile(r"\{[\w]*[.\[]")  # "{0.attr}", "{name[key]}": attribute access by string
_MAX_CODE = 200_000


@dataclass
class CheckReport:
    """What the checks found: ``ok``, the controller class, every problem with its line."""

    ok: bool
    class_name: str | None
    errors: list[dict[str, Any]] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str | None:
        """The first problem as one line (``None`` when ok)."""
        if self.ok:
            return None
        e = self.errors[0]
        more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        return f"line {e['line']}: {e['message']}{more}" if e.get("line") else e["message"] + more

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reason": self.reason}


def _module(name: str) -> types.ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


class _Checker(ast.NodeVisitor):
    def __init__(self) -> None:
        self.errors: list[dict[str, Any]] = []
        self.modules: dict[str, str] = {}  # local name -> module name
        self.imports: list[str] = []
        self.from_names: set[str] = set()  # names bound by `from <allowed module> import name`

    def error(self, node: ast.AST | None, message: str) -> None:
        self.errors.append({"line": getattr(node, "lineno", None), "col": getattr(node, "col_offset", None),
                            "message": message})

    # -- imports -----------------------------------------------------------------------------

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            name = alias.name
            if name not in ALLOWED_MODULES:
                self.error(node, f"import of {name!r} is not allowed (allowed: {_allowed()})")
                continue
            self.imports.append(name)
            if alias.asname:
                self.modules[alias.asname] = name
            else:
                top = name.split(".")[0]
                self.modules[top] = top

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            self.error(node, "relative imports are not allowed")
            return
        if base == "__future__":
            return
        for alias in node.names:
            full = f"{base}.{alias.name}"
            local = alias.asname or alias.name
            if alias.name == "*":
                self.error(node, f"'from {base} import *' is not allowed")
            elif full in ALLOWED_MODULES:  # from scipy import stats
                self.imports.append(full)
                self.modules[local] = full
            elif base not in ALLOWED_MODULES:
                self.error(node, f"import from {base!r} is not allowed (allowed: {_allowed()})")
            elif alias.name.startswith("_"):
                self.error(node, f"importing the private name {alias.name!r} is not allowed")
            else:
                self.imports.append(base)
                module = _module(base)
                value = getattr(module, alias.name, None) if module else None
                if module is not None and value is None and not hasattr(module, alias.name):
                    self.error(node, f"{base!r} has no name {alias.name!r}")
                elif isinstance(value, types.ModuleType) and value.__name__ not in ALLOWED_MODULES:
                    self.error(node, f"{full!r} is the module {value.__name__!r}, which is not allowed")
                else:
                    self.from_names.add(local)

    # -- names and attributes ----------------------------------------------------------------

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in FORBIDDEN_NAMES:
            self.error(node, f"the built-in {node.id!r} is not allowed")
        elif node.id.startswith("__"):
            self.error(node, f"the dunder name {node.id!r} is not allowed")
        elif node.id in self.modules:
            self.error(node, f"the module {node.id!r} may only be used as {node.id}.name "
                             "(no aliasing or passing modules around)")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        if attr.startswith("_"):
            is_super_init = (attr == "__init__" and isinstance(node.value, ast.Call)
                             and isinstance(node.value.func, ast.Name) and node.value.func.id == "super")
            if not is_super_init:
                kind = "dunder" if attr.startswith("__") else "private"
                self.error(node, f"{kind} attribute access '.{attr}' is not allowed")
        if attr in FORBIDDEN_ATTRIBUTES:
            self.error(node, f"the attribute '.{attr}' is not allowed (file I/O or introspection)")
        chain = _module_chain(node, self.modules)
        if chain is not None:
            self._check_module_attribute(node, *chain)
            return  # the chain's root Name is the module itself: allowed here
        self.generic_visit(node)

    def _check_module_attribute(self, node: ast.Attribute, module_name: str, path: list[str]) -> None:
        """Every attribute must be taken from an allowed module (``import a.b.c`` may walk
        through the packages ``a`` and ``a.b`` to reach ``a.b.c``), and what it reaches must not be
        a module that is not allowed (``statistics.sys``)."""
        module = _module(module_name)
        if module is None:
            return
        value: Any = module
        where = module_name
        for part in path:
            if isinstance(value, types.ModuleType) and value.__name__ not in ALLOWED_MODULES \
                    and not _leads_to_allowed(f"{value.__name__}.{part}"):
                self.error(node, f"{where}.{part!r}: only names of allowed modules may be used")
                return
            if not hasattr(value, part):
                self.error(node, f"{where!r} has no attribute {part!r}")
                return
            value = getattr(value, part)
            where = f"{where}.{part}"
            if isinstance(value, types.ModuleType) and value.__name__ not in ALLOWED_MODULES \
                    and not _leads_to_allowed(value.__name__):
                self.error(node, f"{where!r} is the module {value.__name__!r}, which is not allowed")
                return
            if not isinstance(value, types.ModuleType):
                return  # attributes of a class or function: checked like any other attribute

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            if "__" in node.value:
                self.error(node, "string constants may not contain '__' (dunder names by string)")
            elif _FORMAT_FIELD.search(node.value):
                self.error(node, "format fields with attribute or index access ('{0.x}', '{0[k]}') "
                                 "are not allowed")

    def visit_Global(self, node: ast.Global) -> None:
        self.error(node, "'global' is not allowed: keep state on the controller object")

    # -- structure ---------------------------------------------------------------------------

    def visit_Module(self, node: ast.Module) -> None:
        for stmt in node.body:
            self._definition(stmt, where="module")
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if node.keywords:
            self.error(node, f"class {node.name}: class keywords (metaclass=...) are not allowed")
        for stmt in node.body:
            self._definition(stmt, where=f"class {node.name}")
        self.generic_visit(node)

    def _definition(self, stmt: ast.stmt, *, where: str) -> None:
        """Module and class bodies hold definitions only: no code runs at import time."""
        if isinstance(stmt, ast.Import | ast.ImportFrom | ast.Pass):
            return
        if isinstance(stmt, ast.ClassDef):
            for base in stmt.bases:
                self._constant_value(base, where)
            for d in stmt.decorator_list:
                self._constant_value(d, where)
            return
        if isinstance(stmt, ast.FunctionDef):  # decorators and defaults run at definition time
            for d in stmt.decorator_list:
                self._decorator(d, where)
            for default in [*stmt.args.defaults, *stmt.args.kw_defaults]:
                if default is not None:
                    self._constant_value(default, where)
            return
        if isinstance(stmt, ast.AsyncFunctionDef):
            self.error(stmt, "async functions are not allowed")
            return
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            return
        if isinstance(stmt, ast.Assign | ast.AnnAssign):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if not all(isinstance(t, ast.Name | ast.Tuple) for t in targets):
                self.error(stmt, f"{where}: only plain names may be assigned at this level")
            if stmt.value is not None:
                self._constant_value(stmt.value, where)
            return
        self.error(stmt, f"{where}: only imports, def, class, docstrings and constant assignments "
                         f"are allowed here, not {type(stmt).__name__}")

    def _decorator(self, d: ast.expr, where: str) -> None:
        """Decorators: the built-in method kinds, ``@x.setter``, or a module's (``functools.cache``,
        ``functools.lru_cache(maxsize=None)``); never the module's own functions (code at import)."""
        func = d.func if isinstance(d, ast.Call) else d
        if isinstance(func, ast.Name) and func.id in ("staticmethod", "classmethod", "property"):
            ok = not isinstance(d, ast.Call)
        elif ((isinstance(func, ast.Attribute) and _module_chain(func, self.modules) is not None)
              or (isinstance(func, ast.Name) and func.id in self.from_names)):  # from functools import cache
            ok = True
        else:
            ok = isinstance(d, ast.Attribute) and d.attr in ("setter", "getter", "deleter")
        if not ok:
            self.error(d, f"{where}: decorators may be staticmethod, classmethod, property or a "
                          "module's function (e.g. functools.lru_cache)")
        if isinstance(d, ast.Call):
            for arg in [*d.args, *(k.value for k in d.keywords)]:
                self._constant_value(arg, where)

    def _constant_value(self, value: ast.expr, where: str) -> None:
        for sub in ast.walk(value):
            if isinstance(sub, ast.Call):
                func = sub.func
                if isinstance(func, ast.Name) and func.id in PURE_BUILTINS:
                    continue
                if isinstance(func, ast.Attribute) and _module_chain(func, self.modules) is not None:
                    continue
                self.error(sub, f"{where}: a constant may only call module functions and pure built-ins")
            elif isinstance(sub, ast.Lambda | ast.NamedExpr | ast.Await | ast.Yield | ast.YieldFrom):
                self.error(sub, f"{where}: {type(sub).__name__} is not allowed in a constant")


def _module_chain(node: ast.Attribute, modules: dict[str, str]) -> tuple[str, list[str]] | None:
    """``(module name, [attr, ...])`` when ``node`` is ``mod.a.b`` with ``mod`` an imported module."""
    path: list[str] = []
    cur: ast.expr = node
    while isinstance(cur, ast.Attribute):
        path.append(cur.attr)
        cur = cur.value
    if isinstance(cur, ast.Name) and cur.id in modules:
        return modules[cur.id], path[::-1]
    return None


def _leads_to_allowed(name: str) -> bool:
    """``name`` is an allowed module or a package on the way to one (``scipy`` → ``scipy.stats``)."""
    return name in ALLOWED_MODULES or any(m.startswith(name + ".") for m in ALLOWED_MODULES)


def _allowed() -> str:
    return ", ".join(sorted(m for m in ALLOWED_MODULES if m != "__future__"))


def _decorator_names(fn: ast.FunctionDef) -> set[str]:
    names = set()
    for d in fn.decorator_list:
        if isinstance(d, ast.Name):
            names.add(d.id)
        elif isinstance(d, ast.Attribute):
            names.add(d.attr)
    return names


def _find_class(tree: ast.Module, class_name: str | None) -> tuple[str | None, list[dict]]:
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    errors: list[dict] = []

    def methods(cls: ast.ClassDef, seen: set[str]) -> dict[str, ast.FunctionDef]:
        found: dict[str, ast.FunctionDef] = {}
        for base in cls.bases:  # bases defined in the module contribute their methods
            if isinstance(base, ast.Name) and base.id in classes and base.id not in seen:
                found.update(methods(classes[base.id], seen | {base.id}))
        found.update({n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)})
        return found

    candidates = [name for name, cls in classes.items()
                  if {"schedule", "solve"} <= set(methods(cls, {name}))]
    bases = {b.id for c in candidates for b in classes[c].bases if isinstance(b, ast.Name)}
    candidates = [c for c in candidates if c not in bases] or candidates  # the most derived
    if class_name is not None:
        if class_name not in classes:
            return None, [{"line": None, "col": None,
                           "message": f"the module defines no class {class_name!r}"}]
        chosen = class_name
    elif len(candidates) == 1:
        chosen = candidates[0]
    elif not candidates:
        return None, [{"line": None, "col": None,
                       "message": "no class defines both schedule(beta) and solve(question)"}]
    else:
        return None, [{"line": None, "col": None,
                       "message": f"{len(candidates)} classes define schedule and solve "
                                  f"({', '.join(candidates)}): submit exactly one controller class"}]
    found = methods(classes[chosen], {chosen})
    for name in ("schedule", "solve"):
        if name not in found:
            errors.append({"line": classes[chosen].lineno, "col": 0,
                           "message": f"class {chosen} has no {name} method"})
    schedule = found.get("schedule")
    if schedule is not None and not _decorator_names(schedule) & {"classmethod", "staticmethod"}:
        errors.append({"line": schedule.lineno, "col": schedule.col_offset,
                       "message": f"{chosen}.schedule must be a @classmethod or @staticmethod"})
    return chosen, errors


def check_code(code: str, class_name: str | None = None) -> CheckReport:
    """Check candidate source against the contract; never raises for bad code."""
    if not isinstance(code, str):
        return CheckReport(False, None, [{"line": None, "col": None,
                                          "message": f"the code must be a str, got {type(code).__name__}"}])
    if len(code) > _MAX_CODE:
        return CheckReport(False, None, [{"line": None, "col": None,
                                          "message": f"the code is longer than {_MAX_CODE} characters"}])
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return CheckReport(False, None, [{"line": exc.lineno, "col": exc.offset,
                                          "message": f"syntax error: {exc.msg}"}])
    except ValueError as exc:  # e.g. null bytes
        return CheckReport(False, None, [{"line": None, "col": None, "message": f"cannot parse: {exc}"}])
    checker = _Checker()
    for node in ast.walk(tree):  # know every imported name before judging any use of it
        if isinstance(node, ast.Import):
            checker.visit_Import(node)
        elif isinstance(node, ast.ImportFrom):
            checker.visit_ImportFrom(node)
    modules, from_names = checker.modules, checker.from_names
    checker = _Checker()
    checker.modules, checker.from_names = modules, from_names
    checker.visit(tree)
    chosen, class_errors = _find_class(tree, class_name)
    errors = checker.errors + class_errors
    errors.sort(key=lambda e: (e["line"] is None, e["line"] or 0))
    return CheckReport(not errors, chosen, errors, sorted(set(checker.imports)))
