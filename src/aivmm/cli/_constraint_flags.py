"""The constraint flags shared by ``aivmm plan``, ``aivmm run`` and ``aivmm serve``, one per row
of the constraints table (:data:`aivmm.planner.constraints.CONSTRAINTS`).

A flag's text is read as the literal it spells (``5`` an integer, ``0.5`` a number, anything else
a string) and handed to :class:`~aivmm.planner.constraints.Constraints`, the same check the API
and a server's config go through; a bad value is a ConfigError naming the flag before any work.
"""

from __future__ import annotations

import argparse
from typing import Any

from aivmm.errors import ConfigError
from aivmm.planner.constraints import ConstraintRow, Constraints, constraint_table


def _dest(row: ConstraintRow) -> str:
    return f"constraint_{row.name}"


def _help(row: ConstraintRow) -> str:
    default = row.dump(row.default)
    return row.help + (f" (default {default})" if default not in (None, [], ()) else "")


def add_constraint_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("constraints", "what the placement must satisfy and what it optimises")
    for row in constraint_table():
        g.add_argument(
            row.flag,
            dest=_dest(row),
            metavar=row.metavar,
            default=None,
            help=_help(row),
            action="append" if row.repeat else "store",
        )


def _literal(text: str) -> Any:
    """``5`` → 5, ``0.5``/``1e9``/``inf`` → float, anything else the text itself (as JSON would type it)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def constraints_from_args(args: argparse.Namespace) -> Constraints:
    """The Constraints the flags ask for (defaults for flags not given or not defined on this parser)."""
    values: dict[str, Any] = {}
    flags: list[str] = []
    for row in constraint_table():
        given = getattr(args, _dest(row), None)
        if given is None or given == []:
            continue
        values[row.name] = ",".join(given) if row.repeat else _literal(given)
        flags.append(row.flag)
    try:
        return Constraints(**values)
    except ConfigError as exc:
        raise ConfigError(f"bad constraint flag ({', '.join(flags)}): {exc}") from exc
