"""One CLI grammar (issue 22, points 5 and 6): positional archive, --json, exit codes, -q/-v, completion, help, speed."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import edgeseg_cli

ROOT = Path(__file__).parents[1]

#: every sub-command that reports something, and so takes --json
REPORTING = {"run", "verify", "info", "bench", "measure", "build", "compare", "targets", "matrix", "deploy", "status",
             "rollback", "recover", "devices list", "devices provision", "keys new", "export mender", "spec init",
             "toolchain build"}
#: the others: groups of sub-commands, an interactive one, the completion script
NOT_REPORTING = {"keys", "devices", "devices trust", "completion", "export", "spec", "toolchain"}
ARCHIVE_COMMANDS = ("run", "verify", "info", "bench", "measure", "deploy", "compare", "export mender")
SOURCE_PATH = re.compile(r"[\w/.-]+\.py\b")


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for name, child in action.choices.items():
                found[" ".join((*path, name))] = child
                found.update(_walk(child, (*path, name)))
    return found


def _help(main, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0, argv
    return capsys.readouterr().out


def test_every_help_is_self_contained(capsys: pytest.CaptureFixture[str]) -> None:
    """Each (nested) sub-command's --help: exit 0, usage, a description, no source path, --json where it reports."""
    from edgeseg.cli import build_parser, main

    commands = _walk(build_parser())
    assert set(commands) == REPORTING | NOT_REPORTING  # a new command must be classified here
    top = _help(main, [], capsys)
    assert top.startswith("usage: edgeseg ") and not SOURCE_PATH.search(top)
    for name, parser in commands.items():
        text = _help(main, name.split(), capsys)
        assert text.startswith(f"usage: edgeseg {name} "), name
        assert parser.description and " ".join(parser.description.split()[:4]) in " ".join(text.split()), name
        assert not SOURCE_PATH.search(text), f"{name}: {SOURCE_PATH.search(text).group()}"
        assert "-q, --quiet" in text and "-v, --verbose" in text, name
        assert ("--json" in text) == (name in REPORTING), name


def test_device_help_is_self_contained(capsys: pytest.CaptureFixture[str]) -> None:
    from edgeseg_runtime.cli import build_parser, main

    commands = _walk(build_parser()[0])
    assert set(commands) == {"run", "verify", "info", "bench", "measure"}
    for name in commands:
        text = _help(main, [name], capsys)
        assert text.startswith(f"usage: edgeseg {name} ") and "ARCHIVE" in text and "--json" in text, name
        assert "--archive" not in text and not SOURCE_PATH.search(text), name  # the alias is hidden


def test_help_subprocess_and_global_options_anywhere() -> None:
    proc = edgeseg_cli("--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: edgeseg") and proc.stderr == ""
    for argv in (["-q", "targets"], ["targets", "-q"], ["-v", "targets", "--json"], ["targets", "--json", "-v"]):
        proc = edgeseg_cli(*argv)
        assert proc.returncode == 0, (argv, proc.stderr)
        assert ("edgeseg 0." in proc.stderr) == ("-v" in argv), argv  # -v: the debug line naming the version


def test_help_imports_no_command_code() -> None:
    """Building the parser imports no numpy, backend, deploy stack, completion library or importlib.metadata."""
    code = """
import sys
sys.argv = ["edgeseg", "--help"]
from edgeseg_runtime.cli import console
try:
    console()
except SystemExit:
    pass
heavy = {"numpy", "PIL", "pydantic", "rich", "shtab", "onnx", "onnxruntime", "edgeseg.deploy", "edgeseg.build",
         "importlib.metadata", "edgeseg_runtime.images", "edgeseg_runtime.segmentor"}
print(sorted(heavy & set(sys.modules)))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]", proc.stdout[-300:]


def test_constants_repeated_for_speed_agree() -> None:
    from edgeseg_runtime.cli import _DEFAULT_MAX_PIXELS
    from edgeseg_runtime.images import DEFAULT_MAX_PIXELS

    from edgeseg.cli import LAYOUTS
    from edgeseg.datasets import LAYOUTS as DATASET_LAYOUTS

    assert LAYOUTS == DATASET_LAYOUTS and _DEFAULT_MAX_PIXELS == DEFAULT_MAX_PIXELS


# ------------------------------------------------------------------------------------------ positional archive
@pytest.mark.slow
def test_archive_first_in_every_command(archives: dict[str, Path], photos: dict[str, Path], tmp_path: Path) -> None:
    a = archives["cpu"]
    cases = {
        "run": ["run", a, photos["rocket"], "-o", tmp_path / "run"],
        "verify": ["verify", a],
        "info": ["info", a],
        "bench": ["bench", a, photos["rocket"], "--runs", "2", "--warmup", "0"],
        "measure": ["measure", a, photos["rocket"], "-o", tmp_path / "measure", "--runs", "2", "--warmup", "0"],
        "compare": ["compare", a, "--images", photos["rocket"].parent, "--limit", "1", "--runs", "2", "--warmup", "0",
                    "-o", tmp_path / "report", "--json"],
    }
    for name, argv in cases.items():
        proc = edgeseg_cli(*argv)
        assert proc.returncode == 0, (name, proc.stderr)
    assert (tmp_path / "run" / "rocket.png").is_file() and (tmp_path / "measure" / "measure.json").is_file()
    doc = json.loads(proc.stdout)  # compare --json
    assert doc["gate"]["passed"] and Path(doc["files"]["json"]).is_file()
    # deploy takes the archive first too: it gets past the arguments to the inventory
    proc = edgeseg_cli("deploy", a, "--device", "d1", "--inventory", tmp_path / "none.toml")
    assert proc.returncode == 2 and "none.toml" in proc.stderr and "usage" not in proc.stderr


@pytest.mark.slow
def test_deprecated_archive_option_still_works(archives: dict[str, Path], photos: dict[str, Path], tmp_path: Path) -> None:
    a = str(archives["cpu"])
    for argv in (["verify", "--archive", a], ["info", "-a", a], ["info", f"--archive={a}"], ["verify", f"-a{a}"],
                 ["run", "--archive", a, str(photos["rocket"]), "-o", str(tmp_path / "o")],
                 ["bench", "--runs", "2", "--archive", a, "--warmup", "0"],
                 ["measure", "-a", a, str(photos["rocket"]), "-o", str(tmp_path / "m"), "--runs", "1"]):
        proc = edgeseg_cli(*argv)
        assert proc.returncode == 0, (argv, proc.stderr)
        assert proc.stderr == (f"edgeseg: --archive is deprecated; give the archive first: "
                               f"edgeseg {argv[0]} ARCHIVE ...\n"), argv
    assert edgeseg_cli("info", a).stdout == edgeseg_cli("info", "--archive", a).stdout
    proc = edgeseg_cli("-q", "verify", "--archive", a)  # -q: errors only
    assert proc.returncode == 0 and proc.stderr == ""
    proc = edgeseg_cli("verify", a, "--archive", a)  # twice: a usage error (exit 2), one line after the notice
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("edgeseg: error: ")


def test_move_legacy_archive_forms() -> None:
    from edgeseg_runtime.cli import move_legacy_archive

    assert move_legacy_archive(["run", "--archive", "A", "x.png", "-o", "o"])[0] == ["run", "A", "x.png", "-o", "o"]
    assert move_legacy_archive(["-q", "bench", "--runs", "3", "-a", "A", "i.png"])[0] == [
        "-q", "bench", "A", "--runs", "3", "i.png"]
    for form in (["--archive=A"], ["--arch", "A"], ["-aA"], ["-a=A"]):
        args, line = move_legacy_archive(["info", *form, "--json"])
        assert args == ["info", "A", "--json"] and line and "edgeseg info ARCHIVE" in line, form
    for unchanged in (["info", "A"], ["build", "-t", "cpu"], ["info", "--archive"], ["run", "A", "--", "-a", "x"],
                      ["deploy", "A", "-d", "x"], []):
        assert move_legacy_archive(unchanged) == (unchanged, None), unchanged


# ------------------------------------------------------------------------------------------ exit codes
def test_missing_archive_is_exit_2_in_every_command(tmp_path: Path) -> None:
    missing = tmp_path / "missing.tar.gz"
    image = ROOT / "edgeseg" / "data" / "images" / "rocket.png"
    argvs = {
        "run": ["run", missing, image, "-o", tmp_path / "o"],
        "verify": ["verify", missing],
        "info": ["info", missing],
        "bench": ["bench", missing],
        "measure": ["measure", missing, image, "-o", tmp_path / "m"],
        "deploy": ["deploy", missing, "--device", "d1"],
        "compare": ["compare", missing, "--images", image.parent],
        "export mender": ["export", "mender", missing, "--device-type", "board", "-o", tmp_path / "x.mender"],
    }
    assert set(argvs) == set(ARCHIVE_COMMANDS)
    for name, argv in argvs.items():
        for extra in ([], ["--json"]):
            proc = edgeseg_cli(*argv, *extra)
            assert proc.returncode == 2, (name, proc.stderr)
            assert proc.stderr == f"edgeseg: error: {missing}: no such archive file or folder\n", (name, proc.stderr)
            assert proc.stdout == "", name
    assert not (tmp_path / "o").exists() and not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------------ --json, -q, -v
@pytest.mark.slow
def test_json_output_parses(archives: dict[str, Path], photos: dict[str, Path], tmp_path: Path) -> None:
    a = archives["cpu"]
    bad = tmp_path / "in" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    proc = edgeseg_cli("run", a, photos["astronaut"], bad, "-o", tmp_path / "out", "--json", "--overlay")
    assert proc.returncode == 1
    lines = [json.loads(line) for line in proc.stdout.splitlines()]  # JSON Lines: one object per image
    assert [Path(r["image"]).name for r in lines] == ["astronaut.png", "broken.png"]
    ok, failed = lines
    assert Path(ok["label_map"]).is_file() and Path(ok["overlay"]).is_file() and ok["scores"] is None
    assert ok["classes"][0]["name"] == "person" and 0 < ok["classes"][0]["fraction"] < 1
    assert len(ok["classes"][0]["box"]) == 4 and (ok["width"], ok["height"]) == (512, 512)
    assert "broken.png" in failed["error"]
    assert "1/2 images segmented" in proc.stderr  # the summary is progress: stderr
    verify = json.loads(edgeseg_cli("verify", a, "--json").stdout)
    assert verify["passed"] is True and verify["verdict"].startswith("PASS") and "signature" in verify
    info = json.loads(edgeseg_cli("info", a, "--json").stdout)
    assert info["model"]["name"] == "selfie_segmentation" and info["signature"].startswith("UNSIGNED")
    bench = json.loads(edgeseg_cli("bench", a, "--json", "--runs", "2", "--warmup", "0").stdout)
    assert bench["runs"] == 2
    proc = edgeseg_cli("measure", a, photos["rocket"], "-o", tmp_path / "m", "--json", "--runs", "2")
    doc = json.loads(proc.stdout)
    assert doc == json.loads((tmp_path / "m" / "measure.json").read_text()) and "measured rocket" in proc.stderr
    targets = json.loads(edgeseg_cli("targets", "--json").stdout)
    assert {"name": "cpu", "backend": "onnxruntime"}.items() <= next(t for t in targets if t["name"] == "cpu").items()


@pytest.mark.slow
def test_quiet_and_verbose_build(tmp_path: Path) -> None:
    """-q silences the build's progress (before or after the command), --json keeps stdout pure, -v adds debug."""
    proc = edgeseg_cli("build", "--target", "cpu", "--out", tmp_path / "a")
    assert proc.returncode == 0, proc.stderr
    assert "export shared fp32 ONNX" in proc.stderr and proc.stdout.strip().endswith(".tar.gz")
    for argv in (["-q", "build", "--target", "cpu", "--out", tmp_path / "b"],
                 ["build", "--target", "cpu", "--out", tmp_path / "b", "--quiet"]):
        proc = edgeseg_cli(*argv)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert Path(proc.stdout.strip()).is_file()
    proc = edgeseg_cli("build", "--target", "cpu", "--out", tmp_path / "c", "--json", "-v")
    doc = json.loads(proc.stdout)
    assert Path(doc["archive"]).is_file() and (doc["target"], doc["precision"]) == ("cpu", "fp32")
    assert doc["build_check"]["verdict"].startswith("PASS")
    assert "export shared fp32 ONNX" in proc.stderr and "build: exit 0 after" in proc.stderr  # progress + debug


@pytest.mark.slow
def test_quiet_run(archives: dict[str, Path], photos: dict[str, Path], tmp_path: Path) -> None:
    loud = edgeseg_cli("run", archives["cpu"], photos["rocket"], "-o", tmp_path / "a", "--json")
    quiet = edgeseg_cli("run", "-q", archives["cpu"], photos["rocket"], "-o", tmp_path / "b", "--json")
    assert "images segmented" in loud.stderr and quiet.stderr == ""
    assert loud.stdout.replace(str(tmp_path / "a"), "X") == quiet.stdout.replace(str(tmp_path / "b"), "X")  # results


# ------------------------------------------------------------------------------------------ completion
def test_completion_scripts() -> None:
    pytest.importorskip("shtab", reason="shtab is not installed (a core dependency: pip install 'shtab>=1.13')")
    proc = edgeseg_cli("completion", "bash")
    assert proc.returncode == 0 and len(proc.stdout) > 1000, proc.stderr
    for word in ("verify", "compare", "--json", "--max-drop", "provision"):
        assert word in proc.stdout, word
    if shutil.which("bash"):
        check = subprocess.run(["bash", "-n"], input=proc.stdout, capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr
        complete = subprocess.run(["bash", "-c", proc.stdout + "\nCOMP_WORDS=(edgeseg ver); COMP_CWORD=1; "
                                   "_shtab_edgeseg; echo ${COMPREPLY[@]}"], capture_output=True, text=True, check=False)
        assert complete.stdout.split() == ["verify"], complete.stderr
    for shell, marker in (("zsh", "#compdef edgeseg"), ("fish", "complete -c edgeseg")):
        proc = edgeseg_cli("completion", shell)
        assert proc.returncode == 0 and marker in proc.stdout, shell
    proc = edgeseg_cli("completion", "tcsh")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


# ------------------------------------------------------------------------------------------ console script
def _dist(site: Path, name: str, entry_points: str) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)


def test_console_hands_over_to_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeseg_runtime import cli

    site = tmp_path / "site"
    _dist(site, "other", "[console_scripts]\nhost = nothing:here\n")  # another group's 'host' is not it
    _dist(site, "fake_host", "[edgeseg.cli]\nhost = fake_host_cli:main [extra]\n")
    (site / "fake_host_cli.py").write_text("def main():\n    return 7\n")
    monkeypatch.setattr(sys, "path", [str(site)])
    assert cli.host_entry_point() == "fake_host_cli:main"
    assert cli.console() == 7
    (site / "fake_host_cli.py").write_text("")  # the entry point names a function that is gone
    sys.modules.pop("fake_host_cli", None)
    assert cli.console() == 2
    monkeypatch.setattr(sys, "path", [str(tmp_path / "empty")])
    assert cli.host_entry_point() is None


def test_console_finds_what_importlib_metadata_finds() -> None:
    from importlib.metadata import entry_points

    from edgeseg_runtime.cli import HOST_GROUP, HOST_NAME, host_entry_point

    expected = [ep.value for ep in entry_points(group=HOST_GROUP) if ep.name == HOST_NAME]
    assert host_entry_point() == (expected[0] if expected else None)


# ------------------------------------------------------------------------------------------ installer, invoke
def test_health_check_asks_an_older_runtime_in_its_own_grammar(tmp_path: Path) -> None:
    """A slot whose runtime only knows ``verify --archive A`` (archives built before the positional archive)."""
    from edgeseg_runtime.contract import VerifyOutcome
    from edgeseg_runtime.install import InstallRoot

    old = tmp_path / "old" / "edgeseg_runtime"
    old.mkdir(parents=True)
    (old / "__init__.py").write_text("")
    (old / "__main__.py").write_text(
        "import argparse, json\n"
        "p = argparse.ArgumentParser(prog='edgeseg')\n"
        "s = p.add_subparsers(dest='cmd', required=True)\n"
        "v = s.add_parser('verify')\n"
        "v.add_argument('--archive', '-a', required=True)\n"
        "v.add_argument('--json', action='store_true')\n"
        "a = p.parse_args()\n"
        "print(json.dumps({'passed': True, 'verdict': 'PASS: ' + a.archive}))\n")
    root = InstallRoot(tmp_path / "root")
    env = {"PYTHONPATH": str(tmp_path / "old"), "PATH": "/usr/bin:/bin"}
    answer, why = root._runtime_answer(VerifyOutcome, ["verify", "SLOT", "--json"], env, 60)  # noqa: SLF001
    assert answer is not None and answer.verdict == "PASS: SLOT", why


def test_invoke_help_shows_help_and_builds_nothing(tmp_path: Path) -> None:
    pytest.importorskip("invoke", reason="invoke is not installed (extra 'dev')")
    for task in ("build", "compare", "deploy", "matrix"):
        proc = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), task, "--help"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, (task, proc.stderr)
        assert proc.stdout.startswith("Usage: inv") and "Options:" in proc.stdout, task
    assert not any(tmp_path.iterdir())  # no dist/, no report/
    proc = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), "build"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == "invoke build: error: give --target NAME (see invoke build --help)"


# ----------------------------------------------------------------- found by the new-user review of issue 22
def test_matrix_without_its_extra_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torch/mmseg the matrix stops before writing: a measured support-matrix.* is never replaced."""
    import importlib.util

    from edgeseg.errors import ToolchainError
    from edgeseg.matrix import run_matrix

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mmseg" else real(name, *a))
    (tmp_path / "support-matrix.md").write_text("measured\n")
    with pytest.raises(ToolchainError, match=r"needs (\w+, )*mmseg(, \w+)*: pip install 'edgeseg\[mmseg\]'"):
        run_matrix(out_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["support-matrix.md"]
    assert (tmp_path / "support-matrix.md").read_text() == "measured\n"


@pytest.mark.parametrize("argv, message", [
    (["verify", ""], "ARCHIVE is empty"),
    (["run", "", "x.png", "-o", "out"], "ARCHIVE is empty"),
    (["compare", "a.tar.gz", "--images", ".", "--limit", "0"], "must be >= 1"),
    (["compare", "a.tar.gz", "--images", ".", "--limit", "-1"], "must be >= 1"),
])
def test_usage_errors_found_by_review(argv: list[str], message: str, tmp_path: Path) -> None:
    proc = edgeseg_cli(*argv, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_dangling_archive_link_could_not_run(tmp_path: Path) -> None:
    (tmp_path / "a.tar.gz").symlink_to(tmp_path / "gone.tar.gz")
    for cmd in ("verify", "info"):
        proc = edgeseg_cli(cmd, tmp_path / "a.tar.gz")
        assert proc.returncode == 2 and "no such archive file or folder" in proc.stderr, (cmd, proc.stderr)


def test_the_runtime_alone_names_where_host_commands_come_from(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "edgeseg_runtime", "build", "--target", "cpu"], capture_output=True,
                          text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "'build' comes with the host package (pip install edgeseg)" in proc.stderr
