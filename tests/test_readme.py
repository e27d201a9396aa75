"""README.md stays true to the software.

- Every ``ptytomo SUBCOMMAND --flag`` in a bash block of README.md and docs/ names a subcommand and
  flags that ``cli.build_parser()`` knows.
- Every cheap command of README.md's bash blocks runs, in README order, in one temporary folder, on a
  tiny data set this module makes (one CXI file per angle, written as tests/test_import.py writes them),
  with the sizes replaced through the explicit tables below; each result is checked by numbers.
- The Python API snippet runs, with its sizes replaced the same way.
- Every relative link and image of README.md and docs/ resolves to a file, and a ``#anchor`` to a
  heading of that file.
"""

from __future__ import annotations

import contextlib
import glob
import io
import math
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from ptytomo.cli import build_parser, main
from ptytomo.io import read_data
from ptytomo.io.ptytomo_format import read_reconstruction
from ptytomo.simulate import SimulationConfig, simulate
from test_import import write_cxi  # tests/ is on sys.path (rootdir conftest)

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").rglob("*.md"))

# The README's commands, run on the tiny data set: options appended per subcommand.  argparse keeps the last
# value of a repeated option, so these override the README's sizes (--size 64 -> 12, ...) explicitly.
APPENDED_OPTIONS = {
    # 12^3 voxels, 6 angles, 15 px frames, 7 px probe: seconds instead of minutes
    "simulate": ["--size", "12", "--angles", "6", "--detector", "15", "--probe-diameter", "7", "--step", "3",
                 "--quiet"],
    # write_cxi stores the frames flipped up-down, as a detector may (docs/import.md, --flip)
    "import": ["--flip", "ud", "--quiet"],
    # 3 iterations (sweeps for --method ptycho), 5 ptychography sweeps for Sequential and ADMM
    "reconstruct": ["--iterations", "3", "--ptycho-iterations", "5", "--quiet"],
    # the two half-data reconstructions take reconstruct's options
    "resolution": ["--iterations", "3", "--ptycho-iterations", "5", "--quiet"],
}
# --tomography fbp is direct and refuses --iterations: for it the appended options leave that flag out.
NO_ITERATIONS_WITH = ("--tomography", "fbp")

# Commands of the README's bash blocks that this module does not run, and why.  Anything else that is not a
# `ptytomo` command fails the test, so a new kind of command in the README must be added here or made to run.
EXPENSIVE = {
    "ptytomo demo": "simulates and reconstructs 32^3 voxels x 100 angles at a fixed size (47 s on 2 cores)",
}
NOT_PTYTOMO = {
    "bash scripts/setup.sh": "installs packages (CI runs it: .ci/run)",
    "python3 -m pytest": "the test suite itself",
    "torchrun": "starts several processes; tests/test_distributed.py runs the same under torchrun",
    "pip install": "installs packages",
}

# The Python API snippet's sizes, replaced; every key must occur in the snippet.
SNIPPET_SUBSTITUTIONS = {
    "SimulationConfig(size=32, n_angles=60, step=4)":
        "SimulationConfig(size=12, n_angles=6, detector_size=15, probe_diameter=7, step=3, device='cpu')",
    "ReconstructOptions(iterations=60)": "ReconstructOptions(iterations=3, device='cpu')",
}

# The tiny data set behind `ptytomo import data.h5 scans/*.cxi --angles angles.txt`.
TINY = SimulationConfig(size=12, n_angles=8, detector_size=15, probe_diameter=7, step=3, shift=0,
                        shift_axes="none", noise="poisson", photons=1e5, device="cpu")


# --------------------------------------------------------------------------
# Reading the README
# --------------------------------------------------------------------------


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}[ \t]*\n(.*?)^```", text, flags=re.S | re.M)


def shell_commands(block: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments dropped, ``a && b`` split."""
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        group: list[str] = []
        for word in shlex.split(line, comments=True) + ["&&"]:
            if word != "&&":
                group.append(word)
            elif group:
                commands.append(shlex.join(group))
                group = []
    return commands


def ptytomo_words(command: str) -> list[str] | None:
    """The words after ``ptytomo`` (``ptytomo reconstruct ...``, ``torchrun ... -m ptytomo reconstruct``)."""
    words = shlex.split(command)
    for i, word in enumerate(words):
        if word == "ptytomo" and (i == 0 or words[i - 1] == "-m"):
            return words[i + 1:]
    return None


def readme_commands() -> list[str]:
    return [c for block in fenced_blocks(README.read_text(), "bash") for c in shell_commands(block)]


def all_ptytomo_commands() -> list[tuple[str, str]]:
    found = []
    for path in [README, *DOCS]:
        for block in fenced_blocks(path.read_text(), "bash"):
            found.extend((path.relative_to(ROOT).as_posix(), c) for c in shell_commands(block)
                         if ptytomo_words(c) is not None)
    return found


def subparsers() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


# --------------------------------------------------------------------------
# (a) every flag the README and docs name exists
# --------------------------------------------------------------------------


@pytest.mark.parametrize("where, command", all_ptytomo_commands(), ids=lambda v: v[:70])
def test_every_documented_flag_exists(where, command):
    words = ptytomo_words(command)
    choices = subparsers()
    assert words and words[0] in choices, f"{where}: unknown subcommand in {command!r} (known: {', '.join(choices)})"
    known = {s for action in choices[words[0]]._actions for s in action.option_strings}
    flags = [w.split("=", 1)[0] for w in words[1:] if w.startswith("-") and not re.fullmatch(r"-[\d.]+(e-?\d+)?", w)]
    unknown = [f for f in flags if f not in known]
    assert not unknown, f"{where}: `ptytomo {words[0]}` has no {', '.join(unknown)} (in {command!r})"


def test_the_readme_names_several_commands_and_both_set_up_lines():
    commands = readme_commands()
    assert "bash scripts/setup.sh && ptytomo demo" in README.read_text()
    assert "bash scripts/setup.sh && python3 -m pytest -q" in README.read_text()
    assert "python3 -m pytest -q" in (ROOT / ".ci" / "run").read_text()  # CI runs the README's test command
    subcommands = {ptytomo_words(c)[0] for c in commands if ptytomo_words(c)}
    assert {"import", "info", "reconstruct", "report", "resolution", "export"} <= subcommands


# --------------------------------------------------------------------------
# (b) the cheap commands run, in README order, on tiny data
# --------------------------------------------------------------------------


@dataclass
class Result:
    status: int
    out: str
    err: str


def not_run_reason(command: str) -> str | None:
    for prefix, reason in {**EXPENSIVE, **NOT_PTYTOMO}.items():
        if command == prefix or command.startswith(prefix + " "):
            return reason
    return None


def argv_for(words: list[str], root: Path) -> list[str]:
    """The README's words, globs expanded in the workspace, with the subcommand's appended options."""
    argv = []
    for word in words:
        matches = sorted(glob.glob(word, root_dir=root)) if any(ch in word for ch in "*?[") else []
        argv.extend(matches or [word])
    extra = list(APPENDED_OPTIONS.get(argv[0], []))
    if argv[0] == "reconstruct" and any(argv[i:i + 2] == list(NO_ITERATIONS_WITH) for i in range(len(argv))):
        i = extra.index("--iterations")
        del extra[i:i + 2]
    return argv + extra


@contextlib.contextmanager
def working_directory(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


class Workspace:
    """One folder in which the README's commands run in order; a command first runs the ones before it."""

    def __init__(self, root: Path, commands: list[str]):
        self.root, self.commands, self.results = root, commands, {}

    def result(self, index: int) -> Result:
        for earlier in range(index):
            if earlier not in self.results and not_run_reason(self.commands[earlier]) is None:
                self.run(earlier)
        return self.results[index] if index in self.results else self.run(index)

    def run(self, index: int) -> Result:
        argv = argv_for(ptytomo_words(self.commands[index]), self.root)
        out, err = io.StringIO(), io.StringIO()
        with working_directory(self.root), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(argv)
            except SystemExit as stop:  # argparse: unknown option or subcommand
                status = stop.code if isinstance(stop.code, int) else 2
        self.results[index] = Result(status, out.getvalue(), err.getvalue())
        return self.results[index]


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: tiny problems on the 2 shared cores run several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def original():
    return simulate(TINY, progress=False)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, original, one_thread):
    root = tmp_path_factory.mktemp("readme")
    (root / "scans").mkdir()
    write_cxi(str(root / "scans"), original)
    (root / "angles.txt").write_text("".join(f"{math.degrees(t)!r}\n" for t in original.angles))
    return Workspace(root, readme_commands())


COMMANDS = readme_commands()


def output_of(argv: list[str]) -> Path | None:
    for flag in ("-o", "--output"):
        if flag in argv:
            return Path(argv[argv.index(flag) + 1])
    return None


def check_result(argv: list[str], result: Result, root: Path, original) -> None:
    """Numbers each subcommand's output must show."""
    sub = argv[0]
    if sub == "import":
        data = read_data(root / argv[1])
        assert data.intensities.shape[0] == original.n_angles
        np.testing.assert_allclose(np.sort(data.angles), np.sort(original.angles), atol=1e-9)
        sums = np.median(data.intensities.sum(axis=(2, 3))[data.valid_or_all()])
        assert sums == pytest.approx(np.median(original.intensities.sum(axis=(2, 3))), rel=0.01)
    elif sub == "simulate":
        data = read_data(root / argv[1])
        assert data.intensities.shape[0] == 6 and data.truth is not None and np.abs(data.truth).max() > 0
    elif sub == "info":
        assert "valid ptytomo data file" in result.out
    elif sub in ("reconstruct", "resolution"):
        path = root / output_of(argv)
        assert path.is_file()
        if sub == "reconstruct":
            recon = read_reconstruction(path)
            assert np.isfinite(np.asarray(recon.volume)).all()
            cost = recon.history["cost"]
            assert len(cost) == 1 or cost[-1] <= cost[0], cost
            if "--compound" in argv:  # the file records the formula; `ptytomo report` reads it from there
                assert recon.parameters.get("compound") == argv[argv.index("--compound") + 1]
            if "--method" in argv and argv[argv.index("--method") + 1] == "ptycho":
                assert recon.transmission is not None and np.isfinite(recon.transmission).all()
        else:
            assert re.search(r"\d\s*nm", result.out), result.out
            assert (path.parent / f"{path.stem}_report" / "fsc.png").read_bytes()[:4] == b"\x89PNG"
    elif sub == "report":
        written = [root / line.split(" ", 1)[1] for line in result.out.splitlines() if line.startswith("wrote ")]
        assert written and all(p.read_bytes()[:4] == b"\x89PNG" for p in written)
    elif sub == "export":
        path = root / argv[2]
        assert path.exists()
        if path.suffix in (".tif", ".tiff"):
            import tifffile

            recon = read_reconstruction(root / argv[1])
            np.testing.assert_allclose(tifffile.imread(path), np.asarray(recon.volume).real, rtol=1e-6)


@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=[c[:70] for c in COMMANDS])
def test_readme_command_runs(index, workspace, original):
    command = COMMANDS[index]
    reason = not_run_reason(command)
    if reason is not None:
        pytest.skip(f"not run: {reason}")
    assert ptytomo_words(command) is not None, (
        f"{command!r}: not a ptytomo command; run it here or list it in EXPENSIVE or NOT_PTYTOMO with a reason")
    result = workspace.result(index)
    argv = argv_for(ptytomo_words(command), workspace.root)
    assert result.status == 0, f"`ptytomo {shlex.join(argv)}` ended with status {result.status}:\n{result.err}"
    check_result(argv, result, workspace.root, original)


def test_the_python_api_snippet_runs(tmp_path, one_thread):
    snippets = fenced_blocks(README.read_text(), "python")
    assert len(snippets) == 1, "one Python snippet expected in the README"
    code = snippets[0]
    for old, new in SNIPPET_SUBSTITUTIONS.items():
        assert old in code, f"the README's snippet no longer contains {old!r}: update SNIPPET_SUBSTITUTIONS"
        code = code.replace(old, new)
    namespace: dict = {}
    with working_directory(tmp_path), contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, "README.md", "exec"), namespace)
    recon = namespace["recon"]
    assert recon.history["cost"][-1] < recon.history["cost"][0]
    assert 0 < recon.parameters["relative_rmse_delta"] < 1.5
    assert (tmp_path / "recon.h5").is_file() and (tmp_path / "figures" / "slices.png").is_file()


# --------------------------------------------------------------------------
# (c) links
# --------------------------------------------------------------------------


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_resolve(path):
    broken = []
    for target in links(path):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
            broken.append(f"{target} (no heading #{anchor})")
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)
