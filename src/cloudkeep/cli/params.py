"""Typer's option parsing without pydantic for plain string and flag options.

Typer (since it vendors click) coerces every option value through a pydantic
``TypeAdapter``, built on first use even when the option was not given (--help
included). Our global options are strings that arrive as ``str`` already and
our flags arrive as ``bool`` or None, yet building their adapters imported
pydantic in every command. ``FastGroup`` gives ``str`` and
``bool`` parameters a coercion that passes values of that type through and
hands anything else to Typer's own (so results and errors are Typer's).
Other types (``Path``, ``int``, lists) keep Typer's adapters. On a Typer
without this machinery the group behaves exactly like ``TyperGroup``.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand, TyperGroup

try:
    from typer._coercion import RuntimeParam, build_runtime_param

    _HAS_RUNTIME_PARAM = True
except ImportError:  # a Typer that parses through click alone: nothing to avoid
    _HAS_RUNTIME_PARAM = False


if _HAS_RUNTIME_PARAM:

    class _AsIs(RuntimeParam):
        """Values already of the annotated type as they are, anything else as Typer would.

        No fields of its own, so no ``@dataclass`` (building one costs start-up time).
        """

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if type(value) is self.annotation:
                return value
            typer_own = build_runtime_param(param.type_descriptor)
            return typer_own._coerce_value(value, param=param, ctx=ctx)


def _use_plain_values(params: list[Any]) -> None:
    for param in params:
        descriptor = getattr(param, "type_descriptor", None)
        if (
            descriptor is not None
            and descriptor.annotation in (str, bool)
            and descriptor.file_annotation is None
            and descriptor.parameter_info.parser is None
            and getattr(param, "_runtime_param", False) is None
        ):
            param._runtime_param = _AsIs(descriptor.parameter_info, descriptor.annotation)


class _PlainValues:
    """Set up before parsing, when the command's --help option exists too."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if _HAS_RUNTIME_PARAM:
            _use_plain_values(self.get_params(ctx))  # type: ignore[attr-defined]
        return super().parse_args(ctx, args)  # type: ignore[misc]


class FastGroup(_PlainValues, TyperGroup):
    """``TyperGroup`` whose ``str`` and ``bool`` options skip pydantic."""


class FastCommand(_PlainValues, TyperCommand):
    """``TyperCommand`` whose ``str`` and ``bool`` options skip pydantic."""
