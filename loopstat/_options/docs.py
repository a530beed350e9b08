"""Docs generated from the option table: the README's configuration table and ``loopstat-run --help``."""

from __future__ import annotations

from typing import Dict

from loopstat._options.table import OPTIONS, URL_VARIABLE, Option

# What the docs add after a variable's name.
_NOTES = {
    URL_VARIABLE: (
        "(`udp://host:port`, `udp://[v6]:port`, `host:port`, `unix:///path`, `unixgram:///path`, "
        "`unixstream:///path`, `/path`)"
    ),
    "DD_VERSION": "(as `service`, `env`, `version`)",
    "DD_ENTITY_ID": "(as `dd.internal.entity_id`)",
}


_NONE = "\N{EN DASH}"


def markdown_table() -> str:
    """The README's configuration table."""
    rows = [
        "| setting | argument | type | accepted | default | environment, in order of precedence | `loopstat-run` |",
        "|---|---|---|---|---|---|---|",
    ]
    for option in OPTIONS:
        env = ", ".join(" ".join(filter(None, (f"`{name}`", _NOTES.get(name)))) for name in option.env)
        default = f"`{option.default!r}`" if option.default != () else "none"
        cells = (
            option.doc,
            f"`{option.name}`",
            option.validator.type_doc,
            option.validator.accepted(),
            default,
            env or _NONE,
            _NONE if not option.run else f"`{option.run}`" + _run_default(option),
        )
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _run_default(option: Option) -> str:
    """For the docs: loopstat-run's own default, where it is not install()'s."""
    return "" if option.run_default == option.default else f" (default `{option.run_default!r}`)"


def run_help() -> Dict[str, str]:
    """Each ``LOOPSTAT_*`` variable with what it holds, for ``loopstat-run --help``."""
    return {
        option.run: f"{option.doc}: {option.validator.accepted_text()} "
        f"(default: {option.validator.as_text(option.run_default)})"
        for option in OPTIONS
        if option.run
    }
