"""The documentation site (mkdocs.yml, docs/) builds without a warning and says what the code says.

The CLI reference and the targets table are generated from the real parsers
and profiles at build time (docs/_hooks/edgeseg_docs.py); these tests check
the built pages against the same sources, and every ``edgeseg ...`` command
written in the pages against the real parser, so a changed option fails here
instead of misleading a reader. Also: :class:`edgeseg.BuildResult`'s short repr.
"""

from __future__ import annotations

import html
import inspect
import os
import re
import shlex
import subprocess
import sys
from argparse import ArgumentParser
from pathlib import Path
from types import SimpleNamespace

import pytest

import edgeseg

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"

sys.path.insert(0, str(DOCS / "_hooks"))
import edgeseg_docs

sys.path.remove(str(DOCS / "_hooks"))


def _mkdocs_missing() -> str | None:
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[docs]')"
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mkdocs build --strict`` into a temporary folder; any warning fails it."""
    missing = _mkdocs_missing()
    if missing:
        pytest.skip(missing)
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log[-4000:]}"
    assert "WARNING" not in log, log
    return out


def _page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text(encoding="utf-8")


def _text(page: str) -> str:
    """A page's visible text, tags removed and entities decoded (for plain substring checks)."""
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


@pytest.mark.slow
def test_site_has_every_page(site: Path) -> None:
    for page in ("getting-started", "your-model", "targets", "deploy", "compare", "archive-format",
                 "adding-a-backend", "support-matrix", "reference/cli", "reference/device-cli", "reference/api",
                 "reference/runtime", "reference/contract"):
        assert (site / page / "index.html").is_file(), page
    assert (site / "index.html").is_file()


@pytest.mark.slow
def test_cli_reference_lists_every_command_of_the_real_parsers(site: Path) -> None:
    for page, parser in (("reference/cli", edgeseg_docs.host_parser()),
                         ("reference/device-cli", edgeseg_docs.device_parser())):
        text = _text(_page(site, page))
        commands = [" ".join(("edgeseg", *path)) for path, _, _ in edgeseg_docs.walk(parser)]
        assert len(commands) >= 5
        for command in commands:
            assert command in text, f"{page}: {command!r} missing"
        for _, _, sub in edgeseg_docs.walk(parser):  # every visible option of every command
            for action in sub._actions:
                if action.option_strings and edgeseg_docs._shown(action):
                    assert max(action.option_strings, key=len) in text, f"{page}: {sub.prog} {action.option_strings}"
    host = {p[0] for p, _, _ in edgeseg_docs.walk(edgeseg_docs.host_parser())}
    assert {"build", "compare", "deploy", "run", "verify"} <= host


@pytest.mark.slow
def test_api_page_has_the_public_docstrings(site: Path) -> None:
    text = _text(_page(site, "reference/api"))
    first_line = inspect.getdoc(edgeseg.build).splitlines()[0]
    assert first_line in text
    for name in edgeseg.__all__:
        if name != "__version__":
            assert f"edgeseg.{name}" in text, name
    runtime = _text(_page(site, "reference/runtime"))
    for name in ("edgeseg_runtime.Segmentor", "edgeseg_runtime.Archive", "edgeseg_runtime.verify_archive"):
        assert name in runtime
    from edgeseg_runtime.contract import Limits

    assert inspect.getdoc(Limits).splitlines()[0] in _text(_page(site, "reference/contract"))


@pytest.mark.slow
def test_targets_page_lists_every_profile(site: Path) -> None:
    from edgeseg.targets import load_target

    text = _text(_page(site, "targets"))
    profiles = sorted(REPO.glob("targets/*.toml"))
    assert len(profiles) >= 6
    for path in profiles:
        t = load_target(path)
        row = re.search(rf"\b{re.escape(path.stem)} {re.escape(t.backend)}\b[^|]*? {t.precision} ", text)
        assert row, f"targets page: no row for {path.stem} ({t.backend}, {t.precision})"


# ------------------------------------------------------------------- commands written in the pages
def _commands(markdown: str) -> list[str]:
    """The ``edgeseg ...`` command lines of a page's bash code blocks (comments and ``&&`` chains split off)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;", line):
                words = shlex.split(part, comments=True)
                if words and words[0] == "edgeseg":
                    out.append(shlex.join(words[1:]))
    return out


class _Refused(Exception):
    pass


def _parses(parser: ArgumentParser, argv: list[str]) -> str | None:
    """None when ``parser`` accepts ``argv``, else argparse's message (nothing is run, nothing printed)."""
    def refuse(self: ArgumentParser, status: int = 0, message: str | None = None) -> None:
        raise _Refused(status, (message or "").strip())

    try:
        with pytest.MonkeyPatch.context() as mp:  # every error path of argparse ends in exit(): one-line parsers too
            mp.setattr(ArgumentParser, "exit", refuse)
            mp.setattr(ArgumentParser, "print_usage", lambda self, file=None: None)
            parser.parse_args(argv)
    except _Refused as exc:
        status, message = exc.args
        return None if status == 0 else message
    return None


def test_commands_in_the_pages_parse_with_the_real_parser() -> None:
    parser = edgeseg_docs.host_parser()
    checked, wrong = 0, []
    for page in sorted(DOCS.rglob("*.md")):
        for command in _commands(page.read_text(encoding="utf-8")):
            checked += 1
            error = _parses(parser, shlex.split(command))
            if error:
                wrong.append(f"{page.relative_to(REPO)}: edgeseg {command}\n    {error}")
    assert checked >= 20
    assert not wrong, "commands in the docs the parser refuses:\n" + "\n".join(wrong)


# -------------------------------------------------------------------------------- BuildResult repr
@pytest.mark.slow
def test_build_result_repr_is_one_short_line(tmp_path: Path) -> None:
    result = edgeseg.build(target="cpu", out_dir=tmp_path, report=lambda *_: None)
    text = repr(result)
    assert text == (f"BuildResult(archive={str(result.archive)!r}, target='cpu', precision='fp32', "
                    "gate=None, check='PASS')")
    assert "\n" not in text and len(text) < 200 + len(str(result.archive))
    gated = edgeseg.BuildResult(archive=Path("dist/m-cpu-fp32.tar.gz"), manifest=result.manifest,
                                check=None, accuracy=SimpleNamespace(passed=False))  # type: ignore[arg-type]
    assert repr(gated) == ("BuildResult(archive='dist/m-cpu-fp32.tar.gz', target='cpu', precision='fp32', "
                           "gate='FAIL', check=None)")
    partial = edgeseg.BuildResult(archive=Path("x.tar.gz"), manifest={"target": {}}, check=None)
    assert repr(partial) == "BuildResult(archive='x.tar.gz', target=None, precision=None, gate=None, check=None)"
