"""Reading a Packer template directory with python-hcl2: its variables and its content hash.

``load_template_variables`` returns every ``variable`` block of the ``*.pkr.hcl`` files: type,
default, description, validation rules, and whether it is required (no default). ``check_values``
compares a set of values against them before packer runs: unknown names, missing required values
and type mismatches are all reported at once as one ReleaseInputError. ``check_validations``
evaluates the ``validation`` blocks' conditions in Python, for the small HCL subset packer 1.6.6
templates can use without regex() (literals, ``var.x``, ``length lower upper substr contains``,
comparisons, ``! && ||``); a condition outside that subset is left to ``packer validate``, which
the build runs next in any case.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.errors import PackerError, ReleaseInputError

TEMPLATE_GLOB = "*.pkr.hcl"
_NO_DEFAULT = object()


@dataclass(frozen=True, slots=True)
class Validation:
    condition: str
    error_message: str


@dataclass(frozen=True, slots=True)
class TemplateVariable:
    """One ``variable`` block."""

    name: str
    type: str  # "string", "number", "bool", "list(string)", ... ("any" when not declared)
    description: str = ""
    default: Any = None
    required: bool = True
    validations: tuple[Validation, ...] = field(default_factory=tuple)
    file: str = ""


def _unwrap(expr: Any) -> Any:
    """python-hcl2 wraps expressions as ``${...}``; types and conditions are wanted bare."""
    if isinstance(expr, str) and expr.startswith("${") and expr.endswith("}"):
        return expr[2:-1]
    return expr


def template_files(template_dir: Path) -> list[Path]:
    files = sorted(template_dir.glob(TEMPLATE_GLOB))
    if not files:
        raise PackerError(f"no {TEMPLATE_GLOB} files in template directory {template_dir}")
    return files


def template_hash(template_dir: Path) -> str:
    """sha256 over the template files' names and contents (what the catalog records per release)."""
    h = hashlib.sha256()
    for f in template_files(template_dir):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def load_template_variables(template_dir: Path) -> dict[str, TemplateVariable]:
    """Every variable declared in the template directory, by name."""
    import hcl2
    from hcl2 import SerializationOptions

    opts = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
    out: dict[str, TemplateVariable] = {}
    for f in template_files(template_dir):
        try:
            with f.open() as fh:
                doc = hcl2.load(fh, serialization_options=opts)
        except Exception as e:  # python-hcl2 raises lark errors of several kinds
            raise PackerError(f"template file {f} is not valid HCL: {e}") from e
        for block in doc.get("variable", []):
            for name, body in block.items():
                if name in out:
                    raise PackerError(f"variable {name!r} is declared twice ({out[name].file} and {f.name})")
                validations = tuple(Validation(str(_unwrap(v.get("condition", ""))), str(v.get("error_message", "")))
                                    for v in body.get("validation", []))
                default = body.get("default", _NO_DEFAULT)
                out[name] = TemplateVariable(
                    name=name, type=str(_unwrap(body.get("type", "any"))), description=str(body.get("description", "")),
                    default=None if default is _NO_DEFAULT else default, required=default is _NO_DEFAULT,
                    validations=validations, file=f.name)
    return out


def _type_ok(type_: str, value: Any) -> bool:
    t = type_.replace(" ", "")
    if t == "string":
        return isinstance(value, str)
    if t == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if t == "bool":
        return isinstance(value, bool)
    if t in ("list(string)", "set(string)"):
        return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
    if t.startswith(("list(", "set(", "tuple(")):
        return isinstance(value, list | tuple)
    if t.startswith(("map(", "object(")):
        return isinstance(value, dict)
    return True  # "any" and types we do not model: packer validate decides


def check_values(variables: Mapping[str, TemplateVariable], values: Mapping[str, Any],
                 *, template: str = "template") -> None:
    """Raise ReleaseInputError listing every unknown, missing or mistyped variable."""
    problems: list[str] = []
    for name in sorted(set(values) - set(variables)):
        problems.append(f"{name}: not a variable of the {template} (known: {', '.join(sorted(variables))})")
    for name, var in sorted(variables.items()):
        if name not in values:
            if var.required:
                problems.append(f"{name}: required ({var.description or var.type})")
            continue
        if not _type_ok(var.type, values[name]):
            problems.append(f"{name}: expected {var.type}, got {type(values[name]).__name__} {values[name]!r}")
    if problems:
        raise ReleaseInputError(f"bad variables for the {template}:\n" + "\n".join("  " + p for p in problems))


# --- validation conditions: a small HCL expression evaluator ------------------------------------

class _Unsupported(Exception):
    """The condition uses HCL this evaluator does not know; packer validate will judge it."""


_TOKEN = re.compile(r"""\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<str>"(?:[^"\\]|\\.)*")|(?P<op>==|!=|<=|>=|&&|\|\||[<>!(),.])"""
                    r"""|(?P<name>[A-Za-z_][A-Za-z0-9_-]*))""")


def _tokenize(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            raise _Unsupported(expr[pos:])
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(expr) and expr[pos].isspace():
            pos += 1
    return tokens


def _hcl_len(v: Any) -> int:
    if isinstance(v, str | list | tuple | dict):
        return len(v)
    raise _Unsupported(f"length of {type(v).__name__}")


def _substr(s: Any, offset: Any, length: Any) -> str:
    if not isinstance(s, str) or not isinstance(offset, int | float) or not isinstance(length, int | float):
        raise _Unsupported("substr arguments")
    start = int(offset)
    return s[start:] if int(length) < 0 else s[start:start + int(length)]


_FUNCS: dict[str, Any] = {
    "length": _hcl_len,
    "lower": lambda s: s.lower() if isinstance(s, str) else _unsupported("lower"),
    "upper": lambda s: s.upper() if isinstance(s, str) else _unsupported("upper"),
    "substr": _substr,
    "contains": lambda lst, v: v in lst if isinstance(lst, list | tuple) else _unsupported("contains"),
}


def _unsupported(what: str) -> Any:
    raise _Unsupported(what)


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], values: Mapping[str, Any]):
        self.t = tokens
        self.i = 0
        self.values = values

    def peek(self) -> str:
        return self.t[self.i][1] if self.i < len(self.t) else ""

    def take(self, want: str | None = None) -> tuple[str, str]:
        if self.i >= len(self.t) or (want is not None and self.t[self.i][1] != want):
            raise _Unsupported(f"expected {want or 'more'} at token {self.i}")
        tok = self.t[self.i]
        self.i += 1
        return tok

    def parse(self) -> Any:
        v = self.or_()
        if self.i != len(self.t):
            raise _Unsupported("trailing tokens")
        return v

    def or_(self) -> Any:
        v = self.and_()
        while self.peek() == "||":
            self.take()
            rhs = self.and_()
            v = bool(v) or bool(rhs)
        return v

    def and_(self) -> Any:
        v = self.cmp()
        while self.peek() == "&&":
            self.take()
            rhs = self.cmp()
            v = bool(v) and bool(rhs)
        return v

    def cmp(self) -> Any:
        a = self.unary()
        op = self.peek()
        if op in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            b = self.unary()
            if op == "==":
                return bool(a == b)
            if op == "!=":
                return bool(a != b)
            if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b)):
                raise _Unsupported("ordering of non-numbers")
            return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
        return a

    def unary(self) -> Any:
        if self.peek() == "!":
            self.take()
            return not self.unary()
        return self.primary()

    def primary(self) -> Any:
        kind, text = self.take()
        if kind == "num":
            return float(text) if "." in text else int(text)
        if kind == "str":
            return json.loads(text)  # HCL and JSON agree on the escapes a validation uses
        if text == "(":
            v = self.or_()
            self.take(")")
            return v
        if kind == "name" and text in ("true", "false"):
            return text == "true"
        if kind == "name" and text == "var":
            self.take(".")
            _, name = self.take()
            if name not in self.values:
                raise _Unsupported(f"var.{name} has no value")
            return self.values[name]
        if kind == "name" and text in _FUNCS and self.peek() == "(":
            self.take("(")
            args = []
            while self.peek() != ")":
                args.append(self.or_())
                if self.peek() == ",":
                    self.take(",")
            self.take(")")
            return _FUNCS[text](*args)
        raise _Unsupported(text)


def evaluate_condition(condition: str, values: Mapping[str, Any]) -> bool | None:
    """The condition's truth for ``values`` (variable name -> value), None if it is outside the subset."""
    try:
        return bool(_Parser(_tokenize(condition), values).parse())
    except (_Unsupported, TypeError, ValueError, IndexError):
        return None


def check_validations(variables: Mapping[str, TemplateVariable], values: Mapping[str, Any],
                      *, template: str = "template") -> list[str]:
    """Evaluate every validation block; ReleaseInputError with the template's own messages for those
    that fail. Returns the conditions that could not be evaluated here (packer validate decides)."""
    effective = {n: values.get(n, v.default) for n, v in variables.items() if n in values or not v.required}
    failed: list[str] = []
    undecided: list[str] = []
    for name, var in sorted(variables.items()):
        if name not in effective:
            continue
        for rule in var.validations:
            verdict = evaluate_condition(rule.condition, effective)
            if verdict is None:
                undecided.append(f"{name}: {rule.condition}")
            elif not verdict:
                failed.append(f"{name} = {json.dumps(effective[name])}: {rule.error_message}")
    if failed:
        raise ReleaseInputError(f"variables rejected by the {template}'s validation rules:\n"
                                + "\n".join("  " + f for f in failed))
    return undecided
