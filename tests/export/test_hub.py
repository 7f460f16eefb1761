"""`slm push`, tested up to the network boundary: HfApi.create_repo / create_commit are replaced and the commit that
would be sent is checked (files, a model card built from the run, the loss plot). The token comes only from the
environment or the cached login and is never printed. What cannot be tested here: the upload itself (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slm.checkpoint import save_checkpoint
from slm.cli import main
from slm.config import RunConfig
from slm.models import build_model, preset_config
from slm.tokenizer import byte_tokenizer

hub = pytest.importorskip("huggingface_hub")

TOKEN = "hf_test_secret_token_never_printed"


class FakeApi:
    def __init__(self) -> None:
        self.commits: list[tuple[str, list]] = []
        self.repos: list[tuple[str, bool]] = []

    def create_repo(self, repo_id, *, private=False, exist_ok=False, repo_type=None):
        self.repos.append((repo_id, private))
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, *, commit_message, repo_type=None):
        self.commits.append((repo_id, list(operations)))


@pytest.fixture
def fake(monkeypatch, tmp_path) -> FakeApi:
    api = FakeApi()
    monkeypatch.setattr(hub, "HfApi", lambda *a, **k: api)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no cached login of the machine leaks in
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return api


@pytest.fixture
def run_checkpoint(tmp_path) -> Path:
    run = tmp_path / "run"
    model = build_model(preset_config("test", vocab_size=320))
    cfg = RunConfig(model=model.cfg)
    cfg.data.inputs = ["shakespeare"]
    ckpt = save_checkpoint(run / "checkpoints" / "step_10", model=model, config=cfg, tokenizer=byte_tokenizer())
    (run / "summary.json").write_text(json.dumps({"steps": 10, "params": 90_432,
                                                  "val": {"loss": 2.5, "perplexity": 12.18, "bpb": 1.1}}))
    (run / "plots").mkdir()
    (run / "plots" / "loss.png").write_bytes(b"\x89PNG fake")
    return ckpt


def _ops(api: FakeApi) -> dict[str, object]:
    (_, ops), = api.commits
    return {op.path_in_repo: op.path_or_fileobj for op in ops}


def test_push_checkpoint_uploads_an_hf_folder_and_a_card_from_the_run(fake, run_checkpoint, capsys):
    assert main(["push", "--checkpoint", str(run_checkpoint), "--out", "me/tiny", "--license", "mit"]) == 0
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err and "me/tiny" in out.out
    ops = _ops(fake)
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "loss.png"} <= set(ops)
    assert ".slm-output.json" not in ops
    card = ops["README.md"].decode()
    assert card.startswith("---\nlicense: mit\n") and "library_name: slm" in card
    for needle in ("| architecture | llama |", "`shakespeare`", "| validation loss | 2.5000 |", "![loss](loss.png)",
                   "Intended use"):
        assert needle in card
    assert fake.repos == [("me/tiny", False)]


def test_push_export_uploads_a_gguf_file_as_is(fake, tmp_path):
    gguf_file = tmp_path / "m.gguf"
    gguf_file.write_bytes(b"GGUF...")
    assert main(["push", str(gguf_file), "--out", "me/tiny-gguf", "--private"]) == 0
    ops = _ops(fake)
    assert set(ops) == {"m.gguf", "README.md"} and "- gguf" in ops["README.md"].decode()
    assert fake.repos == [("me/tiny-gguf", True)]


def test_push_without_a_token_or_with_bad_input_is_one_line(monkeypatch, tmp_path, capsys, run_checkpoint):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    for args, needle in ((["--checkpoint", str(run_checkpoint), "--out", "me/x"], "HF_TOKEN"),
                         (["--checkpoint", str(run_checkpoint), "--out", "not-a-repo-id"], "USER/NAME"),
                         (["--out", "me/x"], "--checkpoint"), (["--checkpoint", str(run_checkpoint)], "--out")):
        assert main(["push", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err
