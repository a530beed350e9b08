"""The docs say what the code does: the API as documented is the API, and no text names a developer's machine
or an internal ticket."""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

import loopstat
from tests.receiver import Receiver

ROOT = Path(__file__).resolve().parent.parent
#: The files whose API block must match the code: the README's short one, and the full one.
API_DOCS = ("README.md", "docs/operations.md")

# A developer's machine: a checkout or venv under /work, /root, /home/<user> or /Users, or a file under /tmp.
# Code that needs a temporary file asks tempfile, so a literal "/tmp/..." is a machine's path.
MACHINE_PATH = re.compile(r"(?<![\w.~<>-])/(?:work|root|Users|home/\w+)/|(?<![\w.~<>-])/tmp/\w")
# References to this project's own tracker or to a conversation, which a reader cannot follow. An issue
# named with its project ("CPython issue 130322") is a public one, and fine.
INTERNAL_REFERENCE = re.compile(r"(?<!CPython )(?<!uvloop )(?<!Python )\b[Ii]ssues?[ -]#?\d+|\bseed article", re.I)


def api_block(doc: str) -> str:
    """The first ```python block of ``doc`` that calls ``loopstat.install(``."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        if "monitor = loopstat.install(" in block:
            return str(block)
    raise AssertionError(f"{doc}: no ```python block with 'monitor = loopstat.install('")


def documented_signature(block: str) -> inspect.Signature:
    """The parameters written inside ``loopstat.install(...)``, read as a function definition."""
    start = block.index("loopstat.install(") + len("loopstat.install(")
    depth, end = 1, start
    while depth:
        depth += {"(": 1, ")": -1}.get(block[end], 0)
        end += 1
    tree = ast.parse(f"def install({block[start : end - 1]}): pass")
    function = tree.body[0]
    assert isinstance(function, ast.FunctionDef)
    args = function.args
    positional = args.posonlyargs + args.args
    defaults: List[object] = [None] * (len(positional) - len(args.defaults))
    defaults += [ast.literal_eval(d) for d in args.defaults]
    parameters = [
        inspect.Parameter(a.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d)
        for a, d in zip(positional, defaults)
    ]
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        value = inspect.Parameter.empty if default is None else ast.literal_eval(default)
        parameters.append(inspect.Parameter(arg.arg, inspect.Parameter.KEYWORD_ONLY, default=value))
    return inspect.Signature(parameters)


def plain(signature: inspect.Signature) -> List[Tuple[str, object, object]]:
    """Name, kind and default of each parameter: what a reader of the docs relies on."""
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


@pytest.mark.parametrize("doc", API_DOCS)
def test_the_documented_install_signature_is_the_real_one(doc: str) -> None:
    assert plain(documented_signature(api_block(doc))) == plain(inspect.signature(loopstat.install))


def public_attributes() -> Set[str]:
    loop = asyncio.new_event_loop()
    try:
        monitor = loopstat.install(loop=loop, stall_threshold=None)
        return {name for name in dir(monitor) if not name.startswith("_")}
    finally:
        loop.close()


def documented_attributes(block: str) -> Set[str]:
    return set(re.findall(r"\bmonitor\.(\w+)", block))


def test_the_full_api_block_documents_every_public_monitor_attribute_and_no_other() -> None:
    documented = documented_attributes(api_block("docs/operations.md"))
    assert documented == public_attributes()


def test_the_readmes_api_block_names_only_real_monitor_attributes() -> None:
    documented = documented_attributes(api_block("README.md"))
    assert documented <= public_attributes()
    assert {"lag", "tasks", "utilization", "cpu", "stalls", "stop"} <= documented


def tracked_text_files() -> Dict[str, str]:
    """Every file git tracks (docs, README, CONTRIBUTING, code, bench, tests, dashboards), by path."""
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    files: Dict[str, str] = {}
    for name in done.stdout.decode().split("\0"):
        path = ROOT / name
        if not name or name == "tests/test_docs.py" or not path.is_file():
            continue  # this file holds the patterns themselves
        try:
            files[name] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
    return files


def offending_lines(pattern: re.Pattern[str], files: Dict[str, str]) -> List[str]:
    return [
        f"{name}:{number}: {line.strip()[:120]}"
        for name, text in files.items()
        for number, line in enumerate(text.splitlines(), 1)
        if pattern.search(line)
    ]


def test_no_tracked_file_names_a_developers_machine_path() -> None:
    assert offending_lines(MACHINE_PATH, tracked_text_files()) == []


def test_no_tracked_file_refers_to_an_internal_ticket_or_conversation() -> None:
    assert offending_lines(INTERNAL_REFERENCE, tracked_text_files()) == []


@pytest.mark.parametrize(
    ("line", "found"),
    [
        ("PYTHONPATH=/tmp/bench-peers python -m bench", True),
        ("Command: `/work/venv311/bin/python -m bench idle`", True),
        ("cd /home/alice/loopstat", True),
        ("`<tmp>/loopstat-<uid>/<parent pid>/slot-<n>.lock`", False),
        ("socket_path=/var/run/datadog/dsd.socket", False),
        ("~/.cache/loopstat-tests", False),
        ("tempfile.mkdtemp(prefix='loopstat-')", False),
    ],
)
def test_the_machine_path_pattern_finds_paths_of_a_machine_and_only_those(line: str, found: bool) -> None:
    assert bool(MACHINE_PATH.search(line)) is found


@pytest.mark.parametrize(
    ("line", "found"),
    [
        ("Measured for issue 12 on this machine", True),
        ("The issue-4 arguments", True),
        ("the seed article's monitor", True),
        ("a known issue with uvloop", False),
        ("a CPython issue 130322 workaround", False),
        ("issues a warning", False),
    ],
)
def test_the_internal_reference_pattern_finds_ticket_numbers_and_only_those(line: str, found: bool) -> None:
    assert bool(INTERNAL_REFERENCE.search(line)) is found


def heading_anchors(text: str) -> Set[str]:
    """The anchors a forge makes of a markdown file's headings: lowercased, punctuation dropped, spaces as '-'."""
    return {
        re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        for title in re.findall(r"^#+ (.+)$", text, re.M)
    }


def test_every_relative_link_in_the_docs_reaches_its_file_and_heading() -> None:
    broken = []
    for doc in ["README.md", "CONTRIBUTING.md", *(f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md")))]:
        for link in re.findall(r"\]\(([^)\s]+)\)", (ROOT / doc).read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", link):
                continue  # a web address
            path, _, anchor = link.partition("#")
            target = (ROOT / doc).parent / path if path else ROOT / doc
            if not target.exists():
                broken.append(f"{doc}: {link} (no such file)")
            elif (
                anchor and target.suffix == ".md" and anchor not in heading_anchors(target.read_text(encoding="utf-8"))
            ):
                broken.append(f"{doc}: {link} (no such heading)")
    assert broken == []


def quickstart() -> Tuple[str, str]:
    """The README's quickstart program and the stall log line it says that program writes."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    [program] = [block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "time.sleep(0.4)" in block]
    [line] = re.findall(r"```\n(loopstat: the event loop was blocked .*?)\n```", text)
    return program, line


def test_the_readme_quickstart_writes_the_stall_line_and_cause_tag_the_readme_shows(
    receiver: Receiver, tmp_path: Path
) -> None:
    program, documented = quickstart()
    (tmp_path / "qs.py").write_text(program, encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DD_", "STATSD_", "LOOPSTAT_"))}
    env["DD_DOGSTATSD_PORT"] = str(receiver.port)  # the program gives no port: the variable's is used
    done = subprocess.run(
        [sys.executable, "qs.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=True
    )
    logged = [line for line in done.stderr.splitlines() if line.startswith("loopstat: the event loop was blocked")]
    # Durations vary from run to run; the location, the task and the wording of the cause do not.
    shape = r"\d+".join(re.escape(part) for part in re.split(r"\d+(?= ms)", documented))
    assert len(logged) == 1, done.stderr
    assert re.fullmatch(shape, logged[0]), (logged[0], documented)
    receiver.settle(lambda lines: any(line.name == "myapp.stalls" for line in lines))
    stalls = [line for line in receiver.snapshot() if line.name == "myapp.stalls"]
    assert [dict(line.tags).get("cause") for line in stalls] == ["blocking_call"]


def documented_grafana_panels() -> List[str]:
    """The panel names of docs/dashboards.md's Grafana table: its first column, panels in one row split on "; "."""
    text = (ROOT / "docs" / "dashboards.md").read_text(encoding="utf-8")
    table = text[text.index("| panel | what it shows |") :].split("\n\n", 1)[0]
    rows = [line.split(" | ", 1)[0].lstrip("| ") for line in table.splitlines()[2:]]
    return [name for row in rows for name in row.split("; ")]


def test_the_dashboards_doc_describes_every_grafana_panel_and_no_other() -> None:
    dashboard = json.loads((ROOT / "dashboards" / "grafana-graphite.json").read_text(encoding="utf-8"))
    titles = [panel["title"] for panel in dashboard["panels"] if panel["type"] != "row"]
    names = documented_grafana_panels()
    # A panel is described by the row whose name its title starts with (the tagged row adds ": by service" and such).
    assert [title for title in titles if not any(title.startswith(name) for name in names)] == []
    assert [name for name in names if not any(title.startswith(name) for title in titles)] == []
