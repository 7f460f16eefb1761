"""The `slm` command line: one module per command group, plus the terminal UIs (completion REPL, chat).

Everything that reads flags, prints, or talks to a terminal lives in this package; the library packages below it
(`slm.stages`, `slm.generate`, `slm.posttrain`, `slm.data`, ...) return values and raise `SlmError`, and never print
for the user or read stdin. `slm = "slm.cli:main"` is the console script; `python -m slm.cli` (and
`torchrun -m slm.cli`) runs `__main__.py`.

Modules: `app` (command table, parser, exit codes), `recipe` (recipe + override arguments), `run` (run, train,
tokenizer train, report), `data`, `evaluate`, `generate`, `convert` (export / import), `posttrain` (sft, dpo, grpo,
distill, chat), `repl` and `chat` (the interactive terminal loops).
"""

from .app import build_parser, main

__all__ = ["build_parser", "main"]
