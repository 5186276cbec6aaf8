"""Settings: validated dataclasses, and the one place plain values become them.

Each group of settings is a frozen dataclass declared with `@settings`: field types and ranges
(`Annotated[int, Field(ge=1)]`) are checked by pydantic whenever one is built, so a bad value
fails before any work starts. The entry points hand the resolved Hydra config to `parse`, which
turns every problem into one `ConfigError` line per bad key: `key=value: what is allowed`.
`defaults` gives the nested default values (Hydra's ConfigStore node), so YAML files only hold
overrides and their keys are the field names.
"""

from __future__ import annotations

import dataclasses
import inspect
import pydoc
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

import pydantic
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from musetalk.errors import ConfigError

__all__ = [
    "MISSING",
    "Device",
    "check_options",
    "check_targets",
    "defaults",
    "parse",
    "settings",
]

T = TypeVar("T")

#: How a required value without a default reads in Hydra/OmegaConf configs.
MISSING = "???"

_CONFIG = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
_MODEL_CONFIG = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

#: A torch device name: cpu, cuda, cuda:N, mps.
Device = Annotated[str, Field(pattern=r"^(cpu|cuda(:\d+)?|mps|xpu(:\d+)?)$")]


def settings(cls: type[T]) -> type[T]:
    """Class decorator: a frozen dataclass whose fields are validated on construction."""
    return pydantic.dataclasses.dataclass(frozen=True, config=_CONFIG)(cls)


def parse(cls: type[T], values: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Build a `@settings` class from plain nested values; ConfigError lists every bad key.

    Values equal to MISSING ("???") count as not given. prefix: the key path of `values` in the
    user's config (e.g. "sample"), used in the messages.
    """
    try:
        return TypeAdapter(cls).validate_python(_drop_missing(dict(values or {})))
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, cls, prefix)) from None


def check_options(
    target: Callable[..., Any],
    options: Mapping[str, Any],
    prefix: str,
    untyped: frozenset[str] = frozenset(),
) -> None:
    """Check keyword `options` against `target`'s signature (names, types and the ranges of
    `Annotated` hints) without calling it.

    For settings passed through to a constructor (a face backend's options, a `_target_` node),
    so that a typo, a wrong type or an out-of-range value is a ConfigError before any model is
    loaded. `untyped`: option names whose values are built elsewhere (only their presence counts).
    """
    function = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception:  # unresolvable annotations in a third-party signature: check names only
        hints = {}
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(function).parameters.items():
        if name in ("self", "cls") or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            if param.kind == param.VAR_KEYWORD:
                return  # **kwargs: any name is accepted
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[name] = (Any if name in untyped else hints.get(name, Any), default)
    model = pydantic.create_model(
        getattr(target, "__name__", "options"), __config__=_MODEL_CONFIG, **fields
    )
    try:
        model.model_validate(dict(options))
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, None, prefix, known=sorted(fields))) from None


#: `_target_` packages whose signatures' type hints are checked (elsewhere only the names are:
#: e.g. diffusers annotates list arguments as one-element tuples).
TYPED_TARGETS = ("musetalk.", "lightning.")


def check_targets(tree: Mapping[str, Any], prefix: str = "") -> None:
    """Check every `_target_` node of a resolved Hydra config tree against its target's
    signature (`check_options`), before anything is instantiated. Values that are themselves
    `_target_` nodes are checked on their own; Hydra's `_..._` keys are skipped."""
    errors = []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            try:
                check_targets(value, f"{prefix}{key}.")
            except ConfigError as exc:
                errors.append(str(exc))
    if "_target_" in tree:
        path = str(tree["_target_"])
        target = pydoc.locate(path)
        if target is None:
            errors.append(f"{prefix}_target_={path!r}: cannot be imported")
        else:
            options = {k: v for k, v in tree.items() if not (k.startswith("_") and k.endswith("_"))}
            built = frozenset(
                k for k, v in options.items() if isinstance(v, Mapping) and _has_target(v)
            )
            if not path.startswith(TYPED_TARGETS):  # hints not reliable there: names only
                built = frozenset(options)
            try:
                check_options(target, options, prefix.rstrip("."), untyped=built)
            except ConfigError as exc:
                errors.append(str(exc))
    if errors:
        lines = [line for error in errors for line in error.splitlines()]
        raise ConfigError("\n".join(dict.fromkeys(lines)))


def _has_target(tree: Mapping[str, Any]) -> bool:
    """Whether a node (or, for a dict of nodes, every value) is instantiated by Hydra."""
    if "_target_" in tree:
        return True
    nodes = [v for v in tree.values() if v is not None]
    return bool(nodes) and all(isinstance(v, Mapping) and "_target_" in v for v in nodes)


def defaults(cls: type) -> dict[str, Any]:
    """Nested default values of a `@settings` class; fields without a default are MISSING."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            out[f.name] = MISSING
            continue
        out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _drop_missing(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if isinstance(value, str) and value == MISSING:
            continue
        out[key] = _drop_missing(value) if isinstance(value, dict) else value
    return out


def format_errors(
    exc: ValidationError, cls: type | None, prefix: str = "", known: list[str] | None = None
) -> str:
    """One line per error: `key=value: what is allowed` (unknown keys list the known ones);
    the required keys not given share one line, with the example command of `cls.EXAMPLE`."""
    lines, missing = [], []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not isinstance(p, int) or p >= 0]
        key = ".".join([prefix, *loc] if prefix else loc)
        kind = err["type"]
        if kind in ("unexpected_keyword_argument", "extra_forbidden"):
            names = known if known is not None else _field_names(cls, err["loc"][:-1])
            hint = f" (known: {', '.join(names)})" if names else ""
            lines.append(f"{key}: unknown setting{hint}")
        elif kind in ("missing", "missing_argument"):
            missing.append(key)
        elif kind == "value_error" and (not loc or isinstance(err["input"], dict)):
            # a check across the fields of a group (its __post_init__)
            lines.append(f"{key or 'settings'}: {err['ctx']['error']}")
        elif kind == "value_error":
            lines.append(f"{key}={err['input']!r}: {err['ctx']['error']}")
        else:
            message = err["msg"][0].lower() + err["msg"][1:]
            lines.append(f"{key}={err['input']!r}: {message}")
    if missing:
        example = getattr(cls, "EXAMPLE", None)
        hint = f" (e.g. {example})" if example else ""
        lines.insert(0, f"{', '.join(missing)}: required, not given{hint}")
    return "\n".join(lines)


def _field_names(cls: type | None, loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) settings class at `loc`, for unknown-key messages."""
    for part in loc:
        if cls is None or not dataclasses.is_dataclass(cls):
            return []
        hints = typing.get_type_hints(cls)
        cls = _dataclass_in(hints.get(str(part)))
    if cls is None or not dataclasses.is_dataclass(cls):
        return []
    return sorted(f.name for f in dataclasses.fields(cls))


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        found = _dataclass_in(arg)
        if found is not None:
            return found
    return None
