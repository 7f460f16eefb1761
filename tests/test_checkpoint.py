"""Checkpoints rebuild their model through the architecture registry; checkpoints from before `model.arch` existed
load as llama."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from slm import checkpoint as ckpt
from slm.config import RunConfig
from slm.errors import SlmError
from slm.models import build_model, get_arch, preset_config


def _save(tmp_path, cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    path = ckpt.save_checkpoint(tmp_path / "ckpt", model=model, config=RunConfig(model=cfg))
    return model, path


def _rewrite_config(path, edit) -> None:
    """Edit config.yaml and refresh meta.json's record of it (as an older slm would have written it)."""
    data = yaml.safe_load((path / "config.yaml").read_text())
    edit(data)
    (path / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    meta = json.loads((path / "meta.json").read_text())
    meta["files"]["config.yaml"] = {"bytes": (path / "config.yaml").stat().st_size,
                                    "sha256": ckpt._sha256(path / "config.yaml")}
    (path / "meta.json").write_text(json.dumps(meta))


def test_a_checkpoint_without_arch_loads_as_llama(tmp_path):
    model, path = _save(tmp_path, preset_config("test"))
    _rewrite_config(path, lambda d: d["model"].pop("arch"))
    loaded, cfg = ckpt.load_model(path)
    assert cfg.model.arch == "llama" and type(loaded) is get_arch("llama").model
    x = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), atol=0, rtol=0)


def test_a_checkpoint_of_an_unknown_arch_is_a_one_line_error(tmp_path):
    _, path = _save(tmp_path, preset_config("test"))
    _rewrite_config(path, lambda d: d["model"].update(arch="no-such-arch"))
    with pytest.raises(SlmError, match="unknown architecture.*choose one of .*llama"):
        ckpt.load_model(path)
