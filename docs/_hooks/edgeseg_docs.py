"""MkDocs hook: pages generated at build time from the code, so they cannot drift from it.

A page asks for a generated block with a marker on a line of its own:

``<!-- edgeseg:cli-host -->``
    the host ``edgeseg`` command: every subcommand of the parser that
    :func:`edgeseg.cli.main` builds (walked recursively, nested commands such
    as ``keys new`` included), with usage, description and options;
``<!-- edgeseg:cli-device -->``
    the device command, from :func:`edgeseg_runtime.cli.build_parser`;
``<!-- edgeseg:targets -->``
    a table of ``targets/*.toml`` (loaded and validated with
    :func:`edgeseg.targets.load_target`);
``<!-- edgeseg:api -->``
    mkdocstrings blocks for every public name of ``edgeseg`` (its lazy
    ``__init__``'s ``_LAZY`` table: name -> defining module).

An unknown marker fails the build (``mkdocs build --strict``).

The docstrings use Sphinx cross-reference roles (``:class:`~a.b.C```), which
mkdocstrings' Google-style parser leaves as text: :func:`on_page_content`
turns them into plain code (``C``) in the rendered pages.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

log = logging.getLogger("mkdocs.hooks.edgeseg_docs")

REPO = Path(__file__).resolve().parents[2]
_MARKER = re.compile(r"^<!-- edgeseg:([a-z-]+) -->$", re.MULTILINE)
#: usage lines are wrapped at this width, whatever the terminal that runs mkdocs
_USAGE_COLUMNS = "82"


# ------------------------------------------------------------------------------------------ parsers
def _as_run(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser as ``run_cli`` parses with it: with the options it adds to every command (``-q``/``-v``), if any."""
    import edgeseg_runtime.cli as runtime_cli

    add_global = getattr(runtime_cli, "add_global_options", None)
    return add_global(parser) or parser if callable(add_global) else parser


def host_parser() -> argparse.ArgumentParser:
    """The host ``edgeseg`` parser exactly as ``edgeseg.cli.main`` builds it, without running a command.

    Uses ``edgeseg.cli.build_parser()`` when the module has one; otherwise runs
    ``main([])`` with ``run_cli`` replaced by a function that keeps the parser
    and returns, so the reference always shows what ``main`` really assembles.
    """
    from edgeseg import cli

    builder = getattr(cli, "build_parser", None)
    if callable(builder):
        made = builder()
        return _as_run(made[0] if isinstance(made, tuple) else made)
    kept: list[argparse.ArgumentParser] = []

    def keep(parser: argparse.ArgumentParser, argv: Any = None) -> int:
        kept.append(parser)
        return 0

    with mock.patch.object(cli, "run_cli", keep):
        cli.main([])
    if len(kept) != 1:
        raise RuntimeError("edgeseg.cli.main no longer hands its parser to run_cli; "
                           "give edgeseg.cli a build_parser() and the docs hook uses it")
    return _as_run(kept[0])


def device_parser() -> argparse.ArgumentParser:
    """The on-device ``edgeseg`` parser (the runtime shipped inside every archive)."""
    from edgeseg_runtime.cli import build_parser

    return _as_run(build_parser(prog="edgeseg")[0])


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, help, parser)`` of a parser's direct subcommands, in the order they were added."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases point at the same parser
                    seen.add(id(sub))
                    out.append((name, helps.get(name, ""), sub))
    return out


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str, argparse.ArgumentParser]]:
    """Every subcommand below ``parser``, depth first: ``(("devices", "trust"), help, parser)``."""
    for name, text, sub in _subcommands(parser):
        yield (*path, name), text, sub
        yield from walk(sub, (*path, name))


# ----------------------------------------------------------------------------------------- markdown
def _text(value: str) -> str:
    """Plain text for a Markdown paragraph or table cell: HTML and Markdown characters escaped."""
    value = html.escape(" ".join(value.split()), quote=False)
    return re.sub(r"([\\`*_\[\]|#])", r"\\\1", value)


@contextmanager
def _columns(width: str) -> Iterator[None]:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = width
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """An action's help with argparse's ``%(default)s``-style fields filled in, as ``--help`` prints it."""
    if not action.help:
        return ""
    try:
        return parser._get_formatter()._expand_help(action)
    except (KeyError, TypeError, ValueError):
        return action.help


def _invocation(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    if not action.option_strings:
        return f"`{formatter._format_args(action, action.dest)}`"
    names = sorted(action.option_strings, key=lambda s: (not s.startswith("--"), s))
    if action.nargs == 0:
        return ", ".join(f"`{n}`" for n in names)
    args = formatter._format_args(action, action.dest.upper())
    return ", ".join(f"`{n} {args}`" if i == 0 else f"`{n}`" for i, n in enumerate(names))


def _key(action: argparse.Action) -> tuple[Any, ...]:
    """What makes two options the same option (a program-wide one repeated on every command)."""
    return tuple(sorted(action.option_strings)), action.dest, action.help


def _shown(action: argparse.Action) -> bool:
    return action.help != argparse.SUPPRESS and not isinstance(
        action, (argparse._HelpAction, argparse._SubParsersAction))


def _options_table(parser: argparse.ArgumentParser, actions: list[argparse.Action]) -> list[str]:
    rows = []
    for action in actions:
        notes = []
        if action.required and action.option_strings:
            notes.append("**required**")
        if isinstance(action, argparse._AppendAction):
            notes.append("repeatable")
        text = " ".join([_text(_help(parser, action)), *(f"({n})" for n in notes)]).strip()
        rows.append(f"| {_invocation(parser, action)} | {text} |")
    if not rows:
        return []
    return ["| argument | meaning |", "| --- | --- |", *rows, ""]


def _command_section(parser: argparse.ArgumentParser, path: tuple[str, ...], help_text: str, prog: str,
                     program_wide: set[tuple[Any, ...]]) -> list[str]:
    level = "#" * min(2 + len(path) - 1, 4)
    lines = [f"{level} `{' '.join((prog, *path))}`", ""]
    description = parser.description or help_text
    if description:
        lines += [_text(description), ""]
    with _columns(_USAGE_COLUMNS):
        usage = parser.format_usage().strip()
    lines += ["```text", usage, "```", ""]
    children = _subcommands(parser)
    if children:
        lines += ["| command | what it does |", "| --- | --- |"]
        lines += [f"| [`{' '.join((prog, *path, n))}`](#{_anchor((prog, *path, n))}) | {_text(h)} |" for n, h, _ in children]
        lines.append("")
    repeated = False
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if _shown(a)]
        own = [a for a in actions if _key(a) not in program_wide]
        repeated |= len(own) < len(actions)
        table = _options_table(parser, own)
        if table:
            lines += [f"*{_text(group.title or 'options')}*", "", *table]
    if repeated:
        shared = (f"Also takes the options it shares with `{prog}` (under [`{prog}` options](#{_anchor((prog,))}-options)), "
                  f"before or after `{path[-1]}`.")
        lines += [shared, ""]
    return lines


def _anchor(words: tuple[str, ...]) -> str:
    """The id MkDocs' toc gives a heading ``` `edgeseg devices trust` ``` (its default slugify)."""
    return "-".join(words).lower()


def cli_reference(parser: argparse.ArgumentParser, prog: str = "edgeseg") -> str:
    """Markdown for one command line: the top-level usage and commands, then a section per (sub)command.

    An option the program itself takes (e.g. ``-q``) that a command repeats
    unchanged is listed once, under the program, not under every command.
    """
    with _columns(_USAGE_COLUMNS):
        usage = parser.format_usage().strip()
    lines = [_text(parser.description), ""] if parser.description else []
    lines += ["```text", usage, "```", ""]
    top = _subcommands(parser)
    lines += ["| command | what it does |", "| --- | --- |"]
    lines += [f"| [`{prog} {n}`](#{_anchor((prog, n))}) | {_text(h)} |" for n, h, _ in top]
    lines.append("")
    general = [a for a in parser._actions if a.option_strings and _shown(a)]
    if general:
        lines += [f"## `{prog}` options", "", *_options_table(parser, general)]
    program_wide = {_key(a) for a in general}
    for path, text, sub in walk(parser):
        lines += _command_section(sub, path, text, prog, program_wide)
    return "\n".join(lines)


def targets_table() -> str:
    """A table of the shipped target profiles, from ``targets/*.toml`` (each loaded and validated)."""
    from edgeseg.targets import load_target

    paths = sorted((REPO / "targets").glob("*.toml"))
    if not paths:
        raise RuntimeError(f"no target profiles in {REPO / 'targets'}")
    lines = ["| target | backend | precision | platform | description |", "| --- | --- | --- | --- | --- |"]
    for path in paths:
        t = load_target(path)
        backend = f"`{t.backend}`" + (" (built on the device)" if t.build_on == "device" else "")
        platform = f"{t.platform.os}/{t.platform.arch}, Python {t.platform.python}" + (
            ", offline wheels" if t.platform.offline else "")
        lines.append(f"| `{path.stem}` | {backend} | {t.precision} | {platform} | {_text(t.description)} |")
    return "\n".join(lines) + "\n"


#: headings of the API page, per defining module (a module not listed gets its own name)
_API_SECTIONS = {
    "build": "Build an archive",
    "deploy.engine": "Build a TensorRT engine on a device",
    "spec": "Model spec",
    "targets": "Target profiles",
    "errors": "Errors",
}


def api_reference() -> str:
    """mkdocstrings blocks for ``edgeseg.__all__``, grouped by the module that defines each name."""
    import edgeseg

    lazy: dict[str, str] = edgeseg._LAZY
    public = [n for n in edgeseg.__all__ if n != "__version__"]
    missing = [n for n in public if n not in lazy]
    if missing:
        raise RuntimeError(f"edgeseg.__all__ names without a module in edgeseg._LAZY: {', '.join(missing)}")
    by_module: dict[str, list[str]] = {}
    for name in public:
        by_module.setdefault(lazy[name], []).append(name)
    lines: list[str] = []
    for module, names in by_module.items():
        lines += [f"## {_API_SECTIONS.get(module, module)}", ""]
        for name in names:
            lines += [
                f"::: edgeseg.{module}.{name}",
                "    options:",
                f'      heading: "edgeseg.{name}"',
                f'      toc_label: "edgeseg.{name}"',
                "      heading_level: 3",
                "      show_if_no_docstring: true",
                "",
            ]
    return "\n".join(lines)


GENERATORS: dict[str, Callable[[], str]] = {
    "cli-host": lambda: cli_reference(host_parser()),
    "cli-device": lambda: cli_reference(device_parser()),
    "targets": targets_table,
    "api": api_reference,
}


# ---------------------------------------------------------------------------------------------- hook
_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj|const):<code>(~?)([^<]*)</code>")


def _plain_role(match: re.Match[str]) -> str:
    name = match.group(2)
    return f"<code>{name.rsplit('.', 1)[-1] if match.group(1) else name}</code>"


def on_page_content(html_text: str, **_: Any) -> str:
    """Sphinx roles left in rendered docstrings (``:class:<code>~a.B</code>``) become ``<code>B</code>``."""
    return _ROLE.sub(_plain_role, html_text)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Replace each ``<!-- edgeseg:NAME -->`` line by its generated Markdown."""
    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{page.file.src_path}: unknown generated block {name!r}; known: {', '.join(GENERATORS)}")
        return GENERATORS[name]()

    return _MARKER.sub(fill, markdown)
