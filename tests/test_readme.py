"""Every command in README.md's ```bash blocks is parsed by slm's own CLI (fast) and run in order at a tiny size (slow).

A README line that cannot run here (a GPU, the network, the test suite itself) carries a visible
`(not run by tests: REASON)` in its comment; every other line is a command. The slow test runs them one after the other
in a temporary folder holding copies of recipes/, bench/ and scripts/, so each stage reads what the one before it wrote, with
size overrides appended per command (`TINY`): 2 training steps, small batches, short samples. A server is started,
asked for /health and stopped; `slm chat` reads one message from stdin. About 3 minutes on 2 idle cores.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARK = re.compile(r"#.*\(not run by tests:\s*([^)]+)\)")
VENV_BIN = Path(sys.executable).parent

_TRAIN = ["--train.steps=2", "--train.phases=[]", "--train.batch_size=2", "--train.seq_len=64",
          "--train.eval_every=0", "--train.eval_batches=1", "--train.checkpoint_every=0", "--train.sample_every=0",
          "--train.compile=false", "--eval.max_batches=1", "--sample.max_new_tokens=4",
          "--tokenizer.max_train_bytes=300000", "--run.overwrite=true"]
_POST = ["--train.steps=1", "--train.eval_every=0", "--train.eval_batches=1", "--train.batch_size=2",
         "--train.grad_accum=1", "--train.checkpoint_every=0", "--run.overwrite=true"]
TINY: dict[tuple[str, ...], list[str]] = {  # command prefix -> flags appended to it
    ("slm", "run"): _TRAIN, ("slm", "train"): _TRAIN,
    ("slm", "sft"): _POST, ("slm", "dpo"): _POST, ("slm", "distill", "kd"): _POST,
    ("slm", "grpo"): [*_POST, "--posttrain.grpo.num_generations=2", "--posttrain.grpo.max_completion_tokens=8",
                      "--posttrain.grpo.eval_prompts=2"],
    ("slm", "tokenizer", "train"): ["--tokenizer.max_train_bytes=300000"],
    ("slm", "generate"): ["--max-new-tokens", "8"],
    ("slm", "chat"): ["--max-new-tokens", "8"],
    ("slm", "serve"): ["--compile", "false", "--dtype", "fp32"],  # auto would time and compile the step first
}


def readme_commands(text: str | None = None) -> list[tuple[int, str, str | None]]:
    """(README line number, command, skip reason or None) for every command of the ```bash blocks, in order."""
    lines = (README.read_text(encoding="utf-8") if text is None else text).splitlines()
    out, in_bash = [], False
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            in_bash = not in_bash and stripped == "```bash"
            continue
        if not in_bash or not stripped or stripped.startswith("#"):
            continue
        mark = MARK.search(line)
        for part in line.split("&&"):
            command = " ".join(shlex.split(part, comments=True))
            if command:
                out.append((number, command, mark.group(1).strip() if mark else None))
    return out


_SFT = ["--sft.train.steps=1", "--sft.train.warmup_steps=0", "--sft.train.eval_every=0",
        "--sft.train.eval_batches=1", "--sft.chats.max_conversations=32"]  # a recipe's SFT stage, at tiny size


def _has_sft(recipe: str) -> bool:
    import yaml

    path = ROOT / recipe
    return path.is_file() and bool((yaml.safe_load(path.read_text()) or {}).get("sft"))


def _has_phases(recipe: str) -> bool:
    import yaml

    path = ROOT / recipe
    return path.is_file() and bool(((yaml.safe_load(path.read_text()) or {}).get("train") or {}).get("phases"))


def tiny(argv: list[str]) -> list[str]:
    """`argv` with the size overrides of the longest matching prefix appended."""
    for n in (3, 2):
        flags = TINY.get(tuple(argv[:n]))
        if flags is not None:
            if flags is _TRAIN and _has_phases(argv[2]):  # keep it a curriculum: two tiny phases
                flags = [f if f != "--train.phases=[]" else "--train.phases=[{seq_len: 32, steps: 1}, "
                         "{seq_len: 64, steps: 1}]" for f in flags]
            if flags is _TRAIN and _has_sft(argv[2]):
                flags = [*flags, *_SFT]
            return argv + flags
    if argv[:2] == ["slm", "eval"] and "--tasks" not in argv and "--list-tasks" not in argv:
        return argv + ["--max-batches", "1"]
    return argv


def test_readme_has_runnable_commands_and_visible_skips() -> None:
    commands = readme_commands()
    run = [c for _, c, reason in commands if reason is None]
    assert len(run) >= 25, run
    for stage in ("slm data prepare", "slm data stats", "slm data upload", "slm tokenizer train", "slm run",
                  "slm train", "slm sft", "slm dpo", "slm grpo", "slm distill kd", "slm eval", "slm generate",
                  "slm chat", "slm export hf", "slm serve"):
        assert any(c.startswith(stage) for c in run), f"README runs no `{stage}` command"
    for number, command, reason in commands:
        assert reason is None or len(reason) > 3, f"README.md:{number}: give the reason a command is not run"


def test_readme_commands_parse_and_name_existing_files() -> None:
    """Each slm command is accepted by the CLI parser as written (flags, subcommands, --out forms), and every
    recipes/ or bench/ path it names exists."""
    from slm.cli.app import build_parser
    from slm.errors import SlmError

    problems = []
    for number, command, _reason in readme_commands():
        argv = shlex.split(command)
        for arg in argv:
            if re.match(r"(recipes|bench|scripts)/", arg) and not (ROOT / arg).exists():
                problems.append(f"README.md:{number}: {arg} does not exist")
        if argv[0] != "slm":
            continue
        try:
            args, extra = build_parser().parse_known_args(argv[1:])
        except (SlmError, SystemExit) as exc:
            problems.append(f"README.md:{number}: `{command}`: {exc}")
            continue
        if extra and not getattr(args, "takes_overrides", False):
            problems.append(f"README.md:{number}: `{command}`: unrecognized {extra}")
    assert not problems, "\n".join(problems)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(argv: list[str], cwd: Path, env: dict) -> None:
    port = _free_port()
    proc = subprocess.Popen([*argv, "--port", str(port)], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    assert r.status == 200
                    return
            except OSError:
                time.sleep(1)
        pytest.fail(f"`{' '.join(argv)}` did not answer /health within 300 s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_every_readme_command_runs_at_tiny_size(tmp_path: Path) -> None:
    """SLM_README_DIR=DIR keeps the work folder (to look at, or to continue with SLM_README_FROM=LINE)."""
    tmp_path = Path(os.environ.get("SLM_README_DIR", tmp_path))
    first_line = int(os.environ.get("SLM_README_FROM", "0"))
    for folder in ("recipes", "scripts", "bench"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"),
                        dirs_exist_ok=True)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT / "src")}
    ran: set[str] = set()
    for number, command, reason in readme_commands():
        if reason is not None or command in ran or number < first_line:  # a repeated chain ran already
            continue
        ran.add(command)
        argv = tiny(shlex.split(command))
        if argv[0] == "python":
            argv[0] = sys.executable
        if argv[:2] == ["slm", "serve"]:
            _serve(argv, tmp_path, env)
            print(f"README.md:{number}: {' '.join(argv)} answered /health")
            continue
        t0 = time.perf_counter()
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
                              input="hello\n" if argv[:2] == ["slm", "chat"] else None)
        print(f"README.md:{number} ({time.perf_counter() - t0:.0f} s): {' '.join(argv)}")
        assert done.returncode == 0, (f"README.md:{number}: `{command}` exited {done.returncode}\n"
                                      f"{(done.stdout + done.stderr)[-4000:]}")
