"""The run search language: a filter parsed here and compiled to one SQL query over the runs.

Grammar (keywords are case-insensitive; ``not`` binds tighter than ``and``, ``and`` tighter
than ``or``; parentheses group)::

    filter     := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" or_expr ")" | comparison
    comparison := field OP literal                    OP: = != <> < <= > >=
                | field ["not"] "in" "(" literal ("," literal)* ")"
                | field ["not"] ("like" | "ilike") string
    field      := ("metrics" | "params" | "tags" | "attributes") "." key
                | status | name | experiment | start_time | end_time | run_id | parent_run_id
    key        := [A-Za-z0-9_.-/]+ | `any key` | "any key"
    literal    := 'string' | "string" | number        (a quote inside a string is doubled)

Examples: ``metrics.auc > 0.8 and params.model = 'lgbm'``,
``tags.`team name` in ('ml', "data") or not status = 'failed'``,
``attributes.start_time >= '2024-06-01T00:00:00+00:00'``.

Meaning, the same on SQLite and PostgreSQL:

- ``metrics.k`` is the run's latest value of ``k`` (highest step, then time, then log order,
  as :class:`~flywheel.tracking.store.RunStore` defines it); the literal must be a number.
- ``params.k`` and ``tags.k`` are strings. With a string literal they compare as strings
  (byte order on SQLite, the database collation on PostgreSQL). With a number literal they
  compare numerically, and only values that are numbers take part: a value is a number when it
  is a JSON number with at most 30 digits in each part and a two-digit exponent (``"100"``,
  ``"0.1"``, ``"1e-05"``; not ``"inf"``, ``"nan"``, ``" 1"`` or ``"1,5"``). So
  ``params.trees > 50`` matches ``"100"`` and skips ``"auto"``. An ``in`` list may mix both.
- Attributes ``status``, ``name``, ``experiment``, ``run_id`` and ``parent_run_id`` are
  strings; ``start_time`` and ``end_time`` compare with an ISO-8601 string that has a time
  zone, or with a number of milliseconds since the epoch.
- A comparison on a key the run does not have is false, whatever the operator (``!=`` and
  ``not in`` included), and so is one on a metric whose latest value is NaN. ``not`` is the
  exact complement: ``not metrics.auc > 0.5`` matches runs without ``auc``.
- ``like`` is case-sensitive, ``ilike`` is not (ASCII only on SQLite); ``%`` matches any run of
  characters, ``_`` one character, and a backslash makes the next one literal.

The whole filter becomes one SQL condition (``EXISTS`` and correlated subqueries over the
indexed ``(run_id, key)`` columns); runs are never filtered in Python. Errors are
``ValidationError("filter", ...)`` naming the position and the offending token; a filter is at
most 10,000 characters and 100 levels deep.

Ordering keys (``order_by=["metrics.auc DESC", "attributes.start_time"]``) use the same fields;
missing values sort last in either direction and the run id breaks ties. Pages are keyset
pages: the opaque token holds the sort values and run id of the last run returned, so a page
starts strictly after it. Runs created or changed while someone pages do not shift the pages
(no duplicate, no gap among runs whose sort values did not change).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from flywheel.errors import ValidationError
from flywheel.storage import schema

__all__ = [
    "And",
    "Comparison",
    "Field",
    "Not",
    "Or",
    "OrderKey",
    "SearchQuery",
    "parse_filter",
    "parse_order_by",
]

Kind = Literal["metric", "param", "tag", "attribute"]
Literal_ = str | float
Bool = ColumnElement[bool]

MAX_FILTER_CHARS = 10_000
MAX_DEPTH = 100
MAX_ORDER_KEYS = 10
ATTRIBUTES = {
    "status": "status",
    "name": "name",
    "experiment": "experiment",
    "start_time": "start_time",
    "end_time": "end_time",
    "run_id": "id",
    "parent_run_id": "parent_run_id",
}
_TIMES = frozenset({"start_time", "end_time"})
_KINDS: dict[str, Kind] = {
    "metric": "metric",
    "metrics": "metric",
    "param": "param",
    "params": "param",
    "tag": "tag",
    "tags": "tag",
    "attribute": "attribute",
    "attributes": "attribute",
}
_PLURAL = {"metric": "metrics", "param": "params", "tag": "tags", "attribute": "attributes"}
_KEY = re.compile(r"[A-Za-z0-9_.\-/ ]{1,250}")
# A param/tag value takes part in a numeric comparison when it matches this (both backends).
NUMBER_PATTERN = r"\A-?(0|[1-9][0-9]{0,29})(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,2})?\Z"
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<field>(?:metrics?|params?|tags?|attributes?)\.(?:`[^`]*`|"[^"]*"|[A-Za-z0-9_.\-/]+))
  | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<string>'(?:[^']|'')*'|"(?:[^"]|"")*")
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE | re.IGNORECASE,
)
_KEYWORDS = frozenset({"and", "or", "not", "in", "like", "ilike", "asc", "desc"})


@dataclass(frozen=True)
class Field:
    """What a comparison or an ordering key looks at: ``metrics.auc``, ``attributes.status``."""

    kind: Kind
    key: str

    def __str__(self) -> str:
        return f"{_PLURAL[self.kind]}.`{self.key}`"


@dataclass(frozen=True)
class Comparison:
    """``field op values``; ``op`` is one of ``= != < <= > >= in notin like ilike notlike
    notilike`` and ``values`` holds one literal, or the list of an ``in``."""

    field: Field
    op: str
    values: tuple[Literal_, ...]
    position: int


@dataclass(frozen=True)
class Not:
    """The complement of ``operand``."""

    operand: Node


@dataclass(frozen=True)
class And:
    """Every operand holds."""

    operands: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    """At least one operand holds."""

    operands: tuple[Node, ...]


Node = Comparison | Not | And | Or


@dataclass(frozen=True)
class OrderKey:
    """One ``order_by`` item."""

    field: Field
    descending: bool = False


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    pos: int


def _tokens(text: str, field: str = "filter") -> list[_Token]:
    out: list[_Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            char = text[pos]
            what = "unterminated string" if char in "'\"`" else f"unexpected character {char!r}"
            raise _error(pos, char, what, field)
        kind = match.lastgroup or ""
        if kind != "ws":
            out.append(_Token(kind, match.group(), pos))
        pos = match.end()
    out.append(_Token("end", "", len(text)))
    return out


def _error(pos: int, token: str, what: str, field: str = "filter") -> ValidationError:
    shown = repr(token) if token else "end of input"
    return ValidationError(
        field, f"at position {pos} ({shown}): {what}", context={"position": pos, "token": token}
    )


def _unquote(text: str) -> str:
    quote = text[0]
    return text[1:-1].replace(quote * 2, quote)


def _field(token: _Token, field: str = "filter") -> Field:
    if token.kind == "word" and token.text.lower() in ATTRIBUTES:
        return Field("attribute", token.text.lower())
    if token.kind != "field":
        raise _error(token.pos, token.text, "expected a field such as metrics.auc", field)
    prefix, _, key = token.text.partition(".")
    kind = _KINDS[prefix.lower()]
    if key[:1] in ("`", '"'):
        key = key[1:-1]
    if kind == "attribute":
        if key.lower() not in ATTRIBUTES:
            known = ", ".join(sorted(ATTRIBUTES))
            raise _error(
                token.pos, token.text, f"unknown attribute; expected one of {known}", field
            )
        return Field("attribute", key.lower())
    if _KEY.fullmatch(key) is None:
        raise _error(token.pos, token.text, f"expected a key matching {_KEY.pattern}", field)
    return Field(kind, key)


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def keyword(self, *words: str) -> str | None:
        tok = self.tok
        if tok.kind == "word" and tok.text.lower() in words:
            self.i += 1
            return tok.text.lower()
        return None

    def expect(self, kind: str, what: str) -> _Token:
        tok = self.tok
        if tok.kind != kind:
            raise _error(tok.pos, tok.text, f"expected {what}")
        self.i += 1
        return tok

    def parse(self) -> Node:
        node = self.or_expr()
        if self.tok.kind != "end":
            raise _error(self.tok.pos, self.tok.text, "expected 'and', 'or' or the end")
        return node

    def or_expr(self) -> Node:
        items = [self.and_expr()]
        while self.keyword("or"):
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_expr(self) -> Node:
        items = [self.not_expr()]
        while self.keyword("and"):
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else And(tuple(items))

    def not_expr(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _error(self.tok.pos, self.tok.text, f"nested deeper than {MAX_DEPTH} levels")
        try:
            if self.keyword("not"):
                return Not(self.not_expr())
            if self.tok.kind == "lparen":
                self.i += 1
                node = self.or_expr()
                self.expect("rparen", "')'")
                return node
            return self.comparison()
        finally:
            self.depth -= 1

    def literal(self) -> Literal_:
        tok = self.tok
        if tok.kind == "string":
            self.i += 1
            return _unquote(tok.text)
        if tok.kind == "number":
            self.i += 1
            value = float(tok.text)
            if value in (float("inf"), float("-inf")):
                raise _error(tok.pos, tok.text, "number out of range")
            return value
        raise _error(tok.pos, tok.text, "expected a string or a number")

    def comparison(self) -> Comparison:
        start = self.tok
        field = _field(start)
        self.i += 1
        op_tok = self.tok
        negate = self.keyword("not") is not None
        if (word := self.keyword("in", "like", "ilike")) is not None:
            op = ("not" if negate else "") + word
            if word == "in":
                self.expect("lparen", "'(' after 'in'")
                values = [self.literal()]
                while self.tok.kind == "comma":
                    self.i += 1
                    values.append(self.literal())
                self.expect("rparen", "',' or ')'")
            else:
                if self.tok.kind != "string":
                    raise _error(self.tok.pos, self.tok.text, f"expected a string after {word!r}")
                values = [self.literal()]
        elif negate:
            raise _error(self.tok.pos, self.tok.text, "expected 'in', 'like' or 'ilike'")
        else:
            if op_tok.kind != "op":
                what = "expected a comparison (= != < <= > >=), 'in' or 'like'"
                raise _error(op_tok.pos, op_tok.text, what)
            self.i += 1
            op = "!=" if op_tok.text == "<>" else op_tok.text
            values = [self.literal()]
        comparison = Comparison(field, op, tuple(values), start.pos)
        _check_types(comparison, op_tok)
        return comparison


def _check_types(c: Comparison, op_tok: _Token) -> None:
    kind, key = c.field.kind, c.field.key
    numbers = all(isinstance(v, float) for v in c.values)
    strings = all(isinstance(v, str) for v in c.values)
    like = c.op.endswith("like")
    if kind == "metric" and not numbers:
        raise _error(op_tok.pos, op_tok.text, f"{c.field} compares with numbers only")
    if kind == "metric" and like:
        raise _error(op_tok.pos, op_tok.text, f"{c.field} is a number: 'like' does not apply")
    if kind == "attribute":
        if key in _TIMES and like:
            raise _error(op_tok.pos, op_tok.text, f"{c.field} is a time: 'like' does not apply")
        if key in _TIMES:
            for value in c.values:
                _as_time(value, c.position)
        elif not strings:
            raise _error(op_tok.pos, op_tok.text, f"{c.field} compares with strings only")


def _as_time(value: Literal_, pos: int) -> datetime:
    if isinstance(value, float):
        try:
            return datetime.fromtimestamp(value / 1000, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise _error(pos, str(value), "milliseconds since the epoch out of range") from exc
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise _error(pos, value, "expected an ISO-8601 time with a time zone") from exc
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise _error(pos, value, "expected an ISO-8601 time with a time zone")
    return parsed


def parse_filter(text: str) -> Node | None:
    """Parse a filter string; ``None`` for an empty filter (every run matches).

    Examples:
        >>> parse_filter("metrics.auc > 0.8 and not status = 'failed'")  # doctest: +ELLIPSIS
        And(operands=(Comparison(field=Field(kind='metric', key='auc'), op='>', ...
        >>> parse_filter("params.lr = ")
        Traceback (most recent call last):
        ...
        flywheel.errors.ValidationError: filter: at position 12 (end of input): expected a ...
    """
    if not isinstance(text, str):
        raise ValidationError("filter", "expected a string")
    if len(text) > MAX_FILTER_CHARS:
        raise ValidationError("filter", f"expected at most {MAX_FILTER_CHARS} characters")
    if not text.strip():
        return None
    return _Parser(text).parse()


def parse_order_by(items: Sequence[str]) -> list[OrderKey]:
    """Parse ``order_by`` items such as ``"metrics.auc DESC"`` (ascending by default).

    Examples:
        >>> parse_order_by(["metrics.auc DESC", "start_time"])  # doctest: +NORMALIZE_WHITESPACE
        [OrderKey(field=Field(kind='metric', key='auc'), descending=True),
         OrderKey(field=Field(kind='attribute', key='start_time'), descending=False)]
    """
    if isinstance(items, str) or not isinstance(items, Sequence):
        raise ValidationError("order_by", "expected a list of strings like 'metrics.auc DESC'")
    if len(items) > MAX_ORDER_KEYS:
        raise ValidationError("order_by", f"expected at most {MAX_ORDER_KEYS} keys")
    keys = []
    for item in items:
        if not isinstance(item, str) or len(item) > 1000:
            raise ValidationError("order_by", "expected strings like 'metrics.auc DESC'")
        tokens = _tokens(item, "order_by")
        field = _field(tokens[0], "order_by")
        rest = tokens[1:-1]
        direction = rest[0].text.lower() if len(rest) == 1 and rest[0].kind == "word" else None
        if rest and direction not in ("asc", "desc"):
            bad = rest[0]
            raise _error(bad.pos, bad.text, "expected ASC, DESC or the end", "order_by")
        keys.append(OrderKey(field, direction == "desc"))
    return keys


# -- compilation ---------------------------------------------------------------------------------

runs = schema.runs
# Built once: an alias computes its column collection on first use, which cost ~1 ms per alias
# per search when made afresh. Sibling subqueries may share an alias (each is its own scope);
# a subquery nested in another uses a different one. Every subquery correlates to ``runs`` only.
_METRIC, _TOP = schema.run_metrics.alias("m"), schema.run_metrics.alias("m_top")
_KV = {"param": schema.run_params.alias("p"), "tag": schema.run_tags.alias("t")}


def _truth(expr: ColumnElement[Any]) -> Bool:
    """Make a possibly-NULL condition two-valued (NULL -> false) so that ``not`` complements."""
    return cast(Bool, sa.func.coalesce(expr, sa.false(), type_=sa.Boolean))


def latest_metric(key: str) -> ColumnElement[Any]:
    """The run's latest value of metric ``key`` (NULL when missing or NaN), correlated to runs."""
    # The highest step first (a min/max lookup on the (run_id, key, step) index), then the
    # newest of the few points at that step: no sort over the whole history of the key.
    m, top = _METRIC, _TOP
    value = sa.case((m.c.is_nan, sa.null()), else_=m.c.value)
    last_step = (
        sa.select(sa.func.max(top.c.step))
        .where(top.c.run_id == runs.c.id, top.c.key == key)
        .correlate(runs)
        .scalar_subquery()
    )
    return (
        sa.select(value)
        .where(m.c.run_id == runs.c.id, m.c.key == key, m.c.step == last_step)
        .order_by(m.c.ts.desc(), m.c.id.desc())
        .limit(1)
        .correlate(runs)
        .scalar_subquery()
    )


def _kv_value(kind: Kind, key: str) -> ColumnElement[Any]:
    t = _KV[kind]
    query = sa.select(t.c.value).where(t.c.run_id == runs.c.id, t.c.key == key)
    return query.correlate(runs).scalar_subquery()


def _compare(expr: ColumnElement[Any], op: str, value: Any) -> ColumnElement[Any]:
    ops: dict[str, Callable[[], ColumnElement[Any]]] = {
        "=": lambda: expr == value,
        "!=": lambda: expr != value,
        "<": lambda: expr < value,
        "<=": lambda: expr <= value,
        ">": lambda: expr > value,
        ">=": lambda: expr >= value,
    }
    return ops[op]()


def _glob(pattern: str) -> str:
    """Translate a LIKE pattern (backslash escapes) to a case-sensitive SQLite GLOB pattern."""
    out, chars = [], iter(pattern)
    for char in chars:
        if char == "\\":
            char = next(chars, "\\")
            out.append(f"[{char}]" if char in "*?[" else char)
        elif char == "%":
            out.append("*")
        elif char == "_":
            out.append("?")
        else:
            out.append(f"[{char}]" if char in "*?[" else char)
    return "".join(out)


class _Compiler:
    def __init__(self, dialect: str) -> None:
        self.dialect = dialect

    def condition(self, node: Node) -> Bool:
        if isinstance(node, And):
            return sa.and_(*(self.condition(n) for n in node.operands))
        if isinstance(node, Or):
            return sa.or_(*(self.condition(n) for n in node.operands))
        if isinstance(node, Not):
            return sa.not_(self.condition(node.operand))
        return self.comparison(node)

    def like(self, expr: ColumnElement[Any], op: str, pattern: str) -> Bool:
        if op.endswith("ilike"):
            matched: Bool = expr.ilike(pattern, escape="\\")
        elif self.dialect == "sqlite":  # SQLite's LIKE ignores case: GLOB does not
            matched = expr.op("GLOB", is_comparison=True)(_glob(pattern))
        else:
            matched = expr.like(pattern, escape="\\")
        return sa.not_(matched) if op.startswith("not") else matched

    def match(self, expr: ColumnElement[Any], c: Comparison, convert: Any = None) -> Bool:
        """A two-valued condition on ``expr`` (NULL -> false) for a one-typed comparison."""
        values = [convert(v) if convert else v for v in c.values]
        if c.op.endswith("like"):
            return _truth(self.like(expr, c.op, str(values[0])))
        if c.op == "in":
            return _truth(expr.in_(values))
        if c.op == "notin":
            return _truth(expr.not_in(values))
        return _truth(_compare(expr, c.op, values[0]))

    def kv_value(self, value: ColumnElement[Any], c: Comparison) -> Bool:
        """The condition on a param/tag value: strings as strings, numbers numerically."""
        number = sa.case(
            (value.regexp_match(NUMBER_PATTERN), sa.cast(value, sa.Double)), else_=sa.null()
        )
        nums = [v for v in c.values if isinstance(v, float)]
        strs = [v for v in c.values if isinstance(v, str)]
        if c.op in ("in", "notin"):
            hits = [_truth(number.in_(nums))] if nums else []
            hits += [_truth(value.in_(strs))] if strs else []
            hit = sa.or_(*hits)
            return sa.not_(hit) if c.op == "notin" else hit
        if nums:
            return self.match(number, c)
        return self.match(value, c)

    def comparison(self, c: Comparison) -> Bool:
        kind, key = c.field.kind, c.field.key
        if kind == "metric":
            return self.match(latest_metric(key), c)
        if kind == "attribute":
            column = runs.c[ATTRIBUTES[key]]
            if key in _TIMES:
                return self.match(column, c, convert=lambda v: _as_time(v, c.position))
            return self.match(column, c)
        t = _KV[kind]
        return sa.exists().where(
            t.c.run_id == runs.c.id, t.c.key == key, self.kv_value(t.c.value, c)
        )


def order_expression(field: Field) -> ColumnElement[Any]:
    """The SQL value a run is ordered by for ``field`` (NULL when the run lacks it)."""
    if field.kind == "metric":
        return latest_metric(field.key)
    if field.kind == "attribute":
        return runs.c[ATTRIBUTES[field.key]]
    return _kv_value(field.kind, field.key)


def _encode(field: Field, value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _decode(field: Field, value: Any) -> Any:
    if value is None:
        return None
    if field.kind == "metric":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif field.kind == "attribute" and field.key in _TIMES:
        if isinstance(value, str):
            return datetime.fromisoformat(value)
    elif isinstance(value, str):
        return value
    raise ValueError("bad value in page token")


DEFAULT_ORDER = (OrderKey(Field("attribute", "start_time"), descending=True),)


class SearchQuery:
    """A parsed search: experiments, filter and ordering, compiled for one SQL dialect.

    ``statement(after, limit)`` returns the page's SELECT: the columns of ``runs`` in table order,
    then one column per ordering key; ``token(row)``/``after(token)`` convert the last row to and
    from the opaque page token.
    """

    def __init__(
        self,
        experiments: Sequence[str] | None,
        filter: str,
        order_by: Sequence[str],
        dialect: str,
    ) -> None:
        self.experiments = None if experiments is None else sorted(set(experiments))
        self.node = parse_filter(filter)
        self.order = parse_order_by(order_by) or list(DEFAULT_ORDER)
        self.dialect = dialect
        spec = [self.experiments, filter, [(str(k.field), k.descending) for k in self.order]]
        self.fingerprint = hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]

    def statement(self, after: tuple[list[Any], str] | None, limit: int) -> sa.Select[Any]:
        """Return the SELECT of one page: runs after the ``after`` position, at most ``limit``."""
        keys = [order_expression(k.field).label(f"_k{i}") for i, k in enumerate(self.order)]
        inner = sa.select(*runs.c, *keys)
        if self.experiments is not None:
            inner = inner.where(runs.c.experiment.in_(self.experiments))
        if self.node is not None:
            inner = inner.where(_Compiler(self.dialect).condition(self.node))
        sub = inner.subquery("matched")
        cols = [sub.c[f"_k{i}"] for i in range(len(self.order))]
        query = sa.select(sub)
        if after is not None:
            query = query.where(_after(cols, self.order, *after, sub.c.id))
        ordering = [
            (col.desc() if key.descending else col.asc()).nulls_last()
            for col, key in zip(cols, self.order, strict=True)
        ]
        return query.order_by(*ordering, sub.c.id.asc()).limit(limit)

    def token(self, row: Any) -> str:
        """Return the page token that continues after ``row`` (a row of :meth:`statement`)."""
        mapping = row._mapping
        values = [_encode(k.field, mapping[f"_k{i}"]) for i, k in enumerate(self.order)]
        data = json.dumps({"f": self.fingerprint, "k": values, "id": mapping["id"]})
        return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")

    def after(self, token: str | None) -> tuple[list[Any], str] | None:
        """Decode ``token`` into the sort values and run id of the last run already returned."""
        if token is None:
            return None
        bad = ValidationError("page_token", "expected a token returned by this same search")
        try:
            if not isinstance(token, str) or len(token) > 100_000:
                raise ValueError("not a string")
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            if not isinstance(data, dict) or data.get("f") != self.fingerprint:
                raise ValueError("another query")
            raw, run_id = data["k"], data["id"]
            if not isinstance(raw, list) or len(raw) != len(self.order):
                raise ValueError("wrong length")
            if not isinstance(run_id, str):
                raise ValueError("bad id")
            values = [_decode(k.field, v) for k, v in zip(self.order, raw, strict=True)]
        except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
            raise bad from exc
        return values, run_id


def _after(
    cols: Sequence[ColumnElement[Any]],
    order: Sequence[OrderKey],
    values: Sequence[Any],
    run_id: str,
    id_col: ColumnElement[Any],
) -> Bool:
    """Rows strictly after (values, run_id) in the order ``col [DESC] NULLS LAST, id``."""
    cond: Bool = id_col > run_id
    for col, key, value in reversed(list(zip(cols, order, values, strict=True))):
        if value is None:  # the last row was in the trailing NULL group of this key
            cond = sa.and_(col.is_(None), cond)
        else:
            beyond = col < value if key.descending else col > value
            cond = sa.or_(beyond, col.is_(None), sa.and_(col == value, cond))
    return cond
