"""Business filters: one engine for online serving, the batch job and similar items.

A filter is an expression in the spirit of Amazon Personalize's filter expressions, with
parameters bound at request time::

    filter     := clause ( "|" clause )*
    clause     := ( "INCLUDE" | "EXCLUDE" ) "ItemID" "WHERE" condition
    condition  := term ( "OR" term )*
    term       := factor ( "AND" factor )*
    factor     := "(" condition ")" | "NOT" factor | operand comparison
    operand    := "ItemID" | "Items." <item feature>
    comparison := ( "=" | "!=" | "<" | "<=" | ">" | ">=" ) value
                | [ "NOT" ] "IN" ( "(" value ( "," value )* ")" | $PARAM )
    value      := number | "string" | 'string' | $PARAM

An item is kept when it matches every INCLUDE clause and no EXCLUDE clause. Keywords are
case-insensitive; feature names are the item features of the Feast repo. On a list feature
(e.g. genres) ``=`` and ``IN`` hold when any element matches, ``!=`` and ``NOT IN`` when none
does. A comparison with a value an item lacks (not in Feast, or a null) is false.

``$NAME`` parameters come from a JSON object at request time (``{"GENRES": ["Comedy"]}``);
every parameter must be given, none may be left over. Parameters are values, never text of the
expression: the Milvus expression is generated from the parsed tree with every literal
re-serialized, so no parameter can change its structure.

Conditions on ``ItemID`` (and on the category field the Milvus collection stores) are pushed
into the Milvus search expression; the whole filter is then applied again after ranking, on the
Feast features of each candidate, so the answer never depends on what was pushed down.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

MAX_EXPRESSION_CHARS = 4_000
MAX_VALUES = 10_000  # literal and parameter values in one filter
MAX_NESTING = 32
ID_OPERAND = "ItemID"
COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")


class FilterError(ValueError):
    """The filter expression or its parameters are malformed (the caller can fix it)."""


# ---------------------------------------------------------------- parsing

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<param>\$[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|!=|=|<|>|\(|\)|,|\|)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)
""", re.VERBOSE)
KEYWORDS = {"INCLUDE", "EXCLUDE", "WHERE", "AND", "OR", "NOT", "IN"}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    at: int


def tokenize(text: str) -> list[Token]:
    tokens, at = [], 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            raise FilterError(f"unexpected character {text[at]!r} at position {at}")
        kind = match.lastgroup
        if kind != "space":
            value = match.group()
            if kind == "word" and value.upper() in KEYWORDS:
                kind, value = "keyword", value.upper()
            tokens.append(Token(kind, value, at))
        at = match.end()
    return tokens


@dataclass(frozen=True)
class Param:
    name: str


@dataclass(frozen=True)
class Comparison:
    operand: str  # "ItemID" or a feature name
    op: str  # one of COMPARISONS, "IN", "NOT IN"
    values: tuple  # literals and Param


@dataclass(frozen=True)
class BoolOp:
    op: str  # "AND", "OR", "NOT"
    parts: tuple


@dataclass(frozen=True)
class Clause:
    include: bool
    condition: Any


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0
        self.depth = 0

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise FilterError("the expression ends too early")
        self.pos += 1
        return token

    def expect(self, kind: str, text: str | None = None) -> Token:
        token = self.peek()
        if token is None or token.kind != kind or (text is not None and token.text != text):
            wanted = text or kind
            found = "the end" if token is None else f"{token.text!r} at position {token.at}"
            raise FilterError(f"expected {wanted}, found {found}")
        return self.take()

    def at(self, kind: str, text: str | None = None) -> bool:
        token = self.peek()
        return token is not None and token.kind == kind and (text is None or token.text == text)

    def parse(self) -> list[Clause]:
        clauses = [self.clause()]
        while self.at("op", "|"):
            self.take()
            clauses.append(self.clause())
        if self.peek() is not None:
            token = self.peek()
            raise FilterError(f"unexpected {token.text!r} at position {token.at}")
        return clauses

    def clause(self) -> Clause:
        token = self.take()
        if token.kind != "keyword" or token.text not in ("INCLUDE", "EXCLUDE"):
            raise FilterError(f"a clause starts with INCLUDE or EXCLUDE, found {token.text!r} "
                              f"at position {token.at}")
        target = self.expect("word")
        if target.text != ID_OPERAND:
            raise FilterError(f"{token.text} applies to ItemID, found {target.text!r} at position {target.at}")
        self.expect("keyword", "WHERE")
        return Clause(token.text == "INCLUDE", self.condition())

    def condition(self):
        parts = [self.term()]
        while self.at("keyword", "OR"):
            self.take()
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else BoolOp("OR", tuple(parts))

    def term(self):
        parts = [self.factor()]
        while self.at("keyword", "AND"):
            self.take()
            parts.append(self.factor())
        return parts[0] if len(parts) == 1 else BoolOp("AND", tuple(parts))

    def factor(self):
        self.depth += 1
        try:
            return self._factor()
        finally:
            self.depth -= 1

    def _factor(self):
        if self.depth > MAX_NESTING:
            raise FilterError(f"the filter nests deeper than {MAX_NESTING} levels")
        if self.at("op", "("):
            self.take()
            inner = self.condition()
            self.expect("op", ")")
            return inner
        if self.at("keyword", "NOT"):
            self.take()
            return BoolOp("NOT", (self.factor(),))
        if self.peek() is None:
            raise FilterError("the expression ends too early: expected ItemID or Items.<feature>")
        operand = self.expect("word")
        if operand.text == ID_OPERAND:
            name = ID_OPERAND
        elif operand.text.startswith("Items.") and len(operand.text) > len("Items."):
            name = operand.text[len("Items."):]
        else:
            raise FilterError(f"expected ItemID or Items.<feature>, found {operand.text!r} at position {operand.at}")
        if self.at("keyword", "NOT"):
            self.take()
            self.expect("keyword", "IN")
            return Comparison(name, "NOT IN", self.value_list())
        if self.at("keyword", "IN"):
            self.take()
            return Comparison(name, "IN", self.value_list())
        op = self.take()
        if op.kind != "op" or op.text not in COMPARISONS:
            raise FilterError(f"expected a comparison (=, !=, <, <=, >, >=, IN, NOT IN) after "
                              f"{operand.text}, found {op.text!r} at position {op.at}")
        return Comparison(name, op.text, (self.value(),))

    def value_list(self) -> tuple:
        if self.at("param"):
            return (Param(self.take().text[1:]),)
        self.expect("op", "(")
        values = [self.value()]
        while self.at("op", ","):
            self.take()
            values.append(self.value())
        self.expect("op", ")")
        return tuple(values)

    def value(self):
        token = self.take()
        if token.kind == "number":
            number = float(token.text)
            return int(number) if re.fullmatch(r"-?\d+", token.text) else number
        if token.kind == "string":
            return _unquote(token.text)
        if token.kind == "param":
            return Param(token.text[1:])
        raise FilterError(f"expected a number, a quoted string or a $PARAMETER, found {token.text!r} "
                          f"at position {token.at}")


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


# ---------------------------------------------------------------- binding

@dataclass(frozen=True)
class FeatureKinds:
    """What the filter may reference: item feature name -> ``"string"``, ``"number"``,
    ``"string_list"`` or ``"number_list"``, and the feature the Milvus collection stores
    (``category_feature``), if any."""
    kinds: dict
    category_feature: str | None = None

    @classmethod
    def from_feast(cls, value_types: dict[str, str], category_feature: str | None = None) -> "FeatureKinds":
        """From the Feast feature view's value types (``features.json``)."""
        mapping = {"string": "string", "float32": "number", "int64": "number",
                   "string_list": "string_list", "int64_list": "number_list"}
        return cls({name: mapping[kind] for name, kind in value_types.items() if kind in mapping},
                   category_feature if category_feature in value_types else None)


@dataclass
class ItemFilter:
    """A parsed filter with its parameters bound and checked against the item features."""
    expression: str
    clauses: list
    features: tuple = field(default_factory=tuple)  # item features the filter reads

    def keep(self, item_ids: np.ndarray, columns: dict[str, Any]) -> np.ndarray:
        """Boolean mask over the 1-D ``item_ids``: which items pass. ``columns`` holds each
        feature in :attr:`features` as a sequence aligned with ``item_ids`` (a value per item,
        a list per item for list features, ``None`` where unknown)."""
        ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        keep = np.ones(ids.size, dtype=bool)
        for clause in self.clauses:
            matched = _evaluate(clause.condition, ids, columns)
            keep &= matched if clause.include else ~matched
        return keep

    def milvus_expression(self, id_field: str, category_field: str | None = None,
                          category_feature: str | None = None) -> str | None:
        """The part of the filter Milvus can evaluate in its search, or ``None``: clauses whose
        every comparison is on ItemID (or on the category feature the collection stores as
        ``category_field``) with =, !=, IN or NOT IN. Literals are re-serialized here (ints as
        ints, strings JSON-quoted), never copied from the request text."""
        fields = {ID_OPERAND: id_field}
        if category_field and category_feature:
            fields[category_feature] = category_field
        parts = []
        for clause in self.clauses:
            text = _milvus(clause.condition, fields)
            if text is not None:
                parts.append(text if clause.include else f"not ({text})")
        return " and ".join(f"({p})" for p in parts) or None


def compile_filter(expression: str, values: dict | str | None, kinds: FeatureKinds) -> ItemFilter:
    """Parse ``expression``, bind its ``$PARAMETERS`` from ``values`` (a dict or a JSON object)
    and check every reference against ``kinds``; raises :class:`FilterError` with what is wrong."""
    if not isinstance(expression, str) or not expression.strip():
        raise FilterError("the filter expression is empty")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise FilterError(f"the filter expression has {len(expression)} characters; at most {MAX_EXPRESSION_CHARS}")
    params = _parse_values(values)
    clauses = _Parser(expression).parse()
    used: set[str] = set()
    counter = [0]
    bound = [Clause(c.include, _bind(c.condition, params, kinds, used, counter)) for c in clauses]
    unused = sorted(set(params) - used)
    if unused:
        raise FilterError(f"filter values given for parameters the expression does not use: {', '.join(unused)}")
    features = tuple(sorted(_features(bound)))
    return ItemFilter(expression, bound, features)


def _parse_values(values) -> dict:
    if values is None or values == "":
        return {}
    if isinstance(values, (bytes, str)):
        try:
            values = json.loads(values)
        except (ValueError, UnicodeDecodeError) as exc:
            raise FilterError(f"filter values must be a JSON object: {exc}") from None
    if not isinstance(values, dict):
        raise FilterError(f"filter values must be a JSON object of parameter -> value, got {type(values).__name__}")
    for name in values:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)):
            raise FilterError(f"filter parameter names are letters, digits and _, got {name!r}")
    return {str(k): v for k, v in values.items()}


def _literal(value, where: str):
    if isinstance(value, bool) or value is None or not isinstance(value, (int, float, str)):
        raise FilterError(f"{where}: values are numbers or strings, got {json.dumps(value)[:60]}")
    if isinstance(value, float) and not math.isfinite(value):
        raise FilterError(f"{where}: numbers must be finite")
    return value


def _bind(node, params: dict, kinds: FeatureKinds, used: set, counter: list):
    if isinstance(node, BoolOp):
        return BoolOp(node.op, tuple(_bind(p, params, kinds, used, counter) for p in node.parts))
    values = []
    for value in node.values:
        if isinstance(value, Param):
            if value.name not in params:
                raise FilterError(f"no value given for parameter ${value.name}")
            used.add(value.name)
            given = params[value.name]
            many = given if isinstance(given, list) else [given]
            if len(many) > 1 and node.op not in ("IN", "NOT IN"):
                raise FilterError(f"${value.name} has {len(many)} values; {node.op} compares with one")
            if not many:
                raise FilterError(f"${value.name} is an empty list")
            values.extend(_literal(v, f"${value.name}") for v in many)
        else:
            values.append(value)
    counter[0] += len(values)
    if counter[0] > MAX_VALUES:
        raise FilterError(f"the filter has more than {MAX_VALUES} values")
    if node.operand == ID_OPERAND:
        kind = "number"
        if any(isinstance(v, str) or (isinstance(v, float) and not v.is_integer()) for v in values):
            raise FilterError("ItemID is compared with integer ids")
        if any(not -2**63 <= v < 2**63 for v in values):
            raise FilterError("an ItemID value is out of the INT64 range")
        values = [int(v) for v in values]
    else:
        kind = kinds.kinds.get(node.operand)
        if kind is None:
            known = ", ".join(sorted(kinds.kinds)) or "none"
            raise FilterError(f"unknown item feature {node.operand!r} (item features: {known})")
        scalar = kind.removesuffix("_list")
        if scalar == "number" and any(isinstance(v, str) for v in values):
            raise FilterError(f"Items.{node.operand} is a number; compare it with numbers")
        if scalar == "string":
            values = [str(v) if not isinstance(v, float) or not v.is_integer() else str(int(v)) for v in values]
        if kind.endswith("_list") and node.op in ("<", "<=", ">", ">="):
            raise FilterError(f"Items.{node.operand} is a list; use =, !=, IN or NOT IN")
        if scalar == "string" and node.op in ("<", "<=", ">", ">="):
            raise FilterError(f"Items.{node.operand} is text; use =, !=, IN or NOT IN")
    return Comparison(node.operand, node.op, tuple(values))


def _features(clauses) -> set:
    names: set = set()

    def walk(node):
        if isinstance(node, BoolOp):
            for part in node.parts:
                walk(part)
        elif node.operand != ID_OPERAND:
            names.add(node.operand)

    for clause in clauses:
        walk(clause.condition)
    return names


# ---------------------------------------------------------------- evaluation

_SCALAR_TESTS: dict[str, Callable[[Any, tuple], bool]] = {
    "=": lambda x, vs: x == vs[0], "!=": lambda x, vs: x != vs[0],
    "<": lambda x, vs: x < vs[0], "<=": lambda x, vs: x <= vs[0],
    ">": lambda x, vs: x > vs[0], ">=": lambda x, vs: x >= vs[0],
}


def _evaluate(node, ids: np.ndarray, columns: dict) -> np.ndarray:
    if isinstance(node, BoolOp):
        if node.op == "NOT":
            return ~_evaluate(node.parts[0], ids, columns)
        results = [_evaluate(p, ids, columns) for p in node.parts]
        return np.logical_and.reduce(results) if node.op == "AND" else np.logical_or.reduce(results)
    if node.operand == ID_OPERAND:
        member = np.isin(ids, np.asarray(node.values, dtype=np.int64))
        if node.op in ("IN", "="):
            return member
        if node.op in ("NOT IN", "!="):
            return ~member
        value = node.values[0]
        return _SCALAR_TESTS[node.op](ids, (value,))
    return np.fromiter((_matches(v, node) for v in columns[node.operand]), dtype=bool, count=len(ids))


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _matches(value, node: Comparison) -> bool:
    if isinstance(value, (list, tuple, np.ndarray)):  # list feature: any / none of its elements
        elements = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                    for v in value if not _missing(v)]
        if node.op in ("=", "IN"):
            return any(e in node.values for e in elements)
        if node.op in ("!=", "NOT IN"):
            return bool(elements) and not any(e in node.values for e in elements)
        return False
    if _missing(value):
        return False
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if node.op == "IN":
        return value in node.values
    if node.op == "NOT IN":
        return value not in node.values
    try:
        return bool(_SCALAR_TESTS[node.op](value, node.values))
    except TypeError:
        return False


_PLAIN_TEXT = re.compile(r"[\w .,:;/&+@#%-]{0,256}")


def _milvus(node, fields: dict) -> str | None:
    """Milvus boolean expression text for ``node``, or ``None`` if any part of it is on a
    field the collection does not store."""
    if isinstance(node, BoolOp):
        parts = [_milvus(p, fields) for p in node.parts]
        if any(p is None for p in parts):
            return None
        if node.op == "NOT":
            return f"not ({parts[0]})"
        return f" {node.op.lower()} ".join(f"({p})" for p in parts)
    target = fields.get(node.operand)
    if target is None or node.op not in ("=", "!=", "IN", "NOT IN"):
        return None
    if node.operand != ID_OPERAND and not all(_PLAIN_TEXT.fullmatch(v) for v in node.values):
        return None  # only plain text is pushed down; the rest is filtered after ranking
    literals = ", ".join(str(int(v)) if node.operand == ID_OPERAND else f'"{v}"' for v in node.values)
    if node.op in ("=", "!="):
        return f"{target} {'==' if node.op == '=' else '!='} {literals}"
    return f"{target} {'in' if node.op == 'IN' else 'not in'} [{literals}]"
