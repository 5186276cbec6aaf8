"""The entry points as a new user meets them: `--help` starts with a usage line and lists only
the entry's own config groups (with the options that exist in conf/), and a command without its
required values says so in one line with an example, exit code 2."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
ENTRIES = {  # script: (primary config, groups composed with "+group=")
    "infer.py": ("infer", ()),
    "preprocess/run.py": ("preprocess", ()),
    "eval.py": ("eval", ()),
    "train.py": ("train", ("experiment",)),
    "app.py": ("app", ()),
}


def own_groups(config: str, extra: tuple[str, ...]) -> dict[str, set[str]]:
    """{group: options} of the groups a primary config's defaults list composes."""
    defaults = yaml.safe_load((CONF / f"{config}.yaml").read_text())["defaults"]
    names = [next(iter(d)) for d in defaults if isinstance(d, dict)]
    names = [n for n in names if (CONF / n).is_dir()] + list(extra)
    return {n: {p.stem for p in (CONF / n).glob("*.yaml")} for n in names}


def listed_groups(help_text: str) -> dict[str, set[str]]:
    """The `Config groups` section of a help text as {group: options}."""
    section = help_text.split("Config groups (group=option):\n", 1)[1].split("\n\n", 1)[0]
    groups = {}
    for line in section.splitlines():
        name, options = line.strip().split(":", 1)
        groups[name] = set(re.findall(r"[\w-]+", options.split("(")[0]))
    return groups


PIPES = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}


def run_all(commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Run the commands concurrently (each is a Python start-up and a Hydra compose)."""
    procs = [subprocess.Popen([sys.executable, *c], cwd=REPO, text=True, **PIPES) for c in commands]
    done = []
    for c, p in zip(commands, procs, strict=True):
        out, err = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(c, p.returncode, out, err))
    return done


@pytest.fixture(scope="module")
def helps() -> dict[str, subprocess.CompletedProcess]:
    return dict(zip(ENTRIES, run_all([[s, "--help"] for s in ENTRIES]), strict=True))


@pytest.mark.parametrize("script", list(ENTRIES))
def test_help_starts_with_usage_and_lists_only_its_own_groups(helps, script):
    proc = helps[script]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python {script} "), proc.stdout[:200]
    assert "powered by Hydra" not in proc.stdout
    config, extra = ENTRIES[script]
    assert listed_groups(proc.stdout) == own_groups(config, extra)
    # the settings follow, with their current values (a required one shows as ???)
    assert proc.stdout.rstrip().splitlines()[-1].strip()


def test_missing_required_values_are_one_line_with_an_example():
    scripts = ["infer.py", "preprocess/run.py", "eval.py"]
    keys = {"infer.py": "video, audio, output", "preprocess/run.py": "input, output"}
    keys["eval.py"] = "generated, output"
    for script, proc in zip(scripts, run_all([[s] for s in scripts]), strict=True):
        assert proc.returncode == 2, (script, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        name = Path(script).stem if script != "preprocess/run.py" else "preprocess"
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"{name}: {keys[script]}: required, not given (e.g. python ")
        assert proc.stdout == ""
