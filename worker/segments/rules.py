"""Rule-based custom segments: named conditions on a user's features, beside the learned personas. Pure.

A rules file (YAML)::

    segments:
      high_value: "spend_7d >= 100"
      at_risk: "days_since_last_event > 14 and event_count >= 5"
      night_owls: "daypart_night > 0.5"

A condition is a comparison or a combination of comparisons with ``and``, ``or``, ``not`` and parentheses; the
operands are feature names and numbers. Nothing else is accepted (no calls, attributes or arithmetic), so a rules
file cannot run code. The feature names (:func:`feature_names`):

* ``event_count``, ``days_since_last_event``, ``monetary_total``, ``sessions`` (decayed), ``weekend_share``,
  ``daypart_night`` / ``_morning`` / ``_afternoon`` / ``_evening`` (shares of activity);
* ``spend_<H>d`` — decayed spend for each configured half-life H (e.g. ``spend_7d``);
* ``count_<H>d_<event_type>`` — decayed count of an event type (e.g. ``count_7d_purchase``; 0 for a type the user
  never had).

Conditions are evaluated in event time, whenever the user's features are: at each applied event and at each silence
re-evaluation (so a condition on ``days_since_last_event`` flips at the next silence check or event after it
becomes true).
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from worker.errors import ConfigError
from worker.features.state import UserState, decay_factors, rescale

_DAY_MS = 86_400_000
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_STATIC = (
    "event_count",
    "days_since_last_event",
    "monetary_total",
    "sessions",
    "weekend_share",
    "daypart_night",
    "daypart_morning",
    "daypart_afternoon",
    "daypart_evening",
)
_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


class SegmentRulesError(ConfigError):
    """The custom segments file is missing, not YAML, or holds a condition this version cannot evaluate."""


def _days(half_life_ms: float) -> str:
    return f"{half_life_ms / _DAY_MS:g}"


def feature_names(half_lives_ms: tuple[float, ...]) -> tuple[str, ...]:
    """The names a condition may use (``count_<H>d_<event_type>`` besides these)."""
    return (*_STATIC, *(f"spend_{_days(h)}d" for h in half_lives_ms))


def rule_features(
    state: UserState, t: int, half_lives_ms: tuple[float, ...], kept_under: tuple[float, ...] | None = None
) -> dict[str, float]:
    """The features conditions see, as of event time ``t``, under the rules' ``half_lives_ms`` (the names they
    were compiled with); a state ``kept_under`` other half-lives (a model learned the stream's) is converted in a
    copy first (worker.features.state.rescale: exact for the half-lives in both)."""
    if kept_under is not None and kept_under != half_lives_ms:
        state = UserState.from_fields(state.to_fields())
        rescale(state, kept_under, half_lives_ms)
    f = decay_factors(max(0, t - state.ref_ts), half_lives_ms)
    slow = f[-1]
    dp_total = sum(state.daypart) or 1.0
    slow_total = state.slow_total
    out = {
        "event_count": float(state.n),
        "days_since_last_event": max(0, t - state.last_ts) / _DAY_MS,
        "monetary_total": state.value_total,
        "sessions": state.sessions * slow,
        "weekend_share": state.weekend / slow_total if slow_total else 0.0,
        "daypart_night": state.daypart[0] / dp_total,
        "daypart_morning": state.daypart[1] / dp_total,
        "daypart_afternoon": state.daypart[2] / dp_total,
        "daypart_evening": state.daypart[3] / dp_total,
    }
    days = [_days(h) for h in half_lives_ms]
    for d, s, fi in zip(days, state.spend, f, strict=True):
        out[f"spend_{d}d"] = s * fi
    for etype, counts in state.rates.items():
        for d, c, fi in zip(days, counts, f, strict=True):
            out[f"count_{d}d_{etype}"] = c * fi
    return out


@dataclass(frozen=True)
class SegmentRule:
    name: str
    condition: str
    names: tuple[str, ...]  # the features it reads
    test: Callable[[dict[str, float]], bool]


def compile_condition(
    text: str, half_lives_ms: tuple[float, ...]
) -> tuple[Callable[[dict[str, float]], bool], tuple[str, ...]]:
    """A condition's test and the feature names it reads; :class:`SegmentRulesError` for anything else."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise SegmentRulesError(f"{text!r}: not a condition ({exc.msg})") from exc
    known = set(feature_names(half_lives_ms))
    count_prefixes = tuple(f"count_{_days(h)}d_" for h in half_lives_ms)
    used: list[str] = []

    def value(node: ast.AST) -> Callable[[dict[str, float]], float]:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            number = float(node.value)
            return lambda _f: number
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = value(node.operand)
            return lambda f: -inner(f)
        if isinstance(node, ast.Name):
            name = node.id
            if name not in known and not (name.startswith(count_prefixes) and len(name) > len(count_prefixes[0])):
                raise SegmentRulesError(
                    f"{text!r}: unknown feature {name!r} (known: {', '.join(sorted(known))}, count_<H>d_<event_type>)"
                )
            used.append(name)
            return lambda f: f.get(name, 0.0)
        raise SegmentRulesError(f"{text!r}: only feature names and numbers can be compared")

    def test(node: ast.AST) -> Callable[[dict[str, float]], bool]:
        if isinstance(node, ast.BoolOp):
            parts = [test(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return lambda f: all(p(f) for p in parts)
            return lambda f: any(p(f) for p in parts)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = test(node.operand)
            return lambda f: not inner(f)
        if isinstance(node, ast.Compare):
            left = value(node.left)
            steps = []
            for op, right in zip(node.ops, node.comparators, strict=True):
                if type(op) not in _COMPARE:
                    raise SegmentRulesError(f"{text!r}: comparison {type(op).__name__} is not supported")
                steps.append((_COMPARE[type(op)], value(right)))

            def compare(f: dict[str, float]) -> bool:
                a = left(f)
                for cmp, right_value in steps:
                    b = right_value(f)
                    if not cmp(a, b):
                        return False
                    a = b
                return True

            return compare
        raise SegmentRulesError(f"{text!r}: expected comparisons joined by and / or / not")

    check = test(tree.body)
    return check, tuple(dict.fromkeys(used))


def parse_segment_rules(doc: Any, half_lives_ms: tuple[float, ...]) -> tuple[SegmentRule, ...]:
    if not isinstance(doc, dict) or not isinstance(doc.get("segments"), dict) or not doc["segments"]:
        raise SegmentRulesError("custom segments: expected a mapping 'segments' of name: condition")
    problems, rules = [], []
    for name, condition in doc["segments"].items():
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(f"{name!r}: a name of letters, digits, '_', '.', '-' (at most 64)")
            continue
        if not isinstance(condition, str):
            problems.append(f"{name}: the condition must be a string")
            continue
        try:
            check, used = compile_condition(condition, half_lives_ms)
        except SegmentRulesError as exc:
            problems.append(f"{name}: {exc}")
            continue
        rules.append(SegmentRule(name, condition, used, check))
    if problems:
        raise SegmentRulesError("custom segments:\n  " + "\n  ".join(problems))
    return tuple(rules)


def load_segment_rules(path: str | Path, half_lives_ms: tuple[float, ...]) -> tuple[SegmentRule, ...]:
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SegmentRulesError(f"custom segments file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise SegmentRulesError(f"custom segments file {path} is not valid YAML: {exc}") from exc
    return parse_segment_rules(doc, half_lives_ms)
