"""The trainer's seams: Task defaults, the typed Batch, auxiliary losses, the process layout and the layer rule."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from slm.models import IGNORE_INDEX, init_model
from slm.runtime import DistInfo
from slm.train.parallel import parallelize
from slm.train.task import Batch, Task

from slm_testutil import run_tiny, tiny_config, train_losses


@dataclasses.dataclass(kw_only=True)
class _Tagged(Batch):
    tag: list[int]


def test_batch_to_moves_every_tensor_and_keeps_its_class():
    b = _Tagged(input_ids=torch.zeros(2, 3, dtype=torch.long), targets=torch.tensor([[1, IGNORE_INDEX, 2]] * 2),
                tag=[4, 5])
    moved = b.to("meta")
    assert type(moved) is _Tagged and moved.tag == [4, 5] and moved.doc_ids is None
    assert moved.input_ids.device.type == "meta" and moved.targets.device.type == "meta"
    assert b.target_count() == 4 and not b.packed


def test_task_optional_parts_have_defaults():
    model = init_model(tiny_config(Path("unused"), Path("unused")).model, torch.device("cpu"), 0)
    task = Task()
    assert task.step_metrics() == {} and task.aux_loss(model) == {} and task.close() is None
    assert task.device == torch.device("cpu")
    with pytest.raises(NotImplementedError):
        task.count(None)


def test_single_process_layout_is_the_bare_model():
    model = torch.nn.Linear(2, 2)
    par = parallelize(model, DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
    assert par.module is model
    with par.micro_batch(last=False):
        pass


def _with_aux(cfg, weight: float = 1e-3):
    """The run's initial model, reporting an L2 'aux loss' (a per-batch mean: the same for any batch)."""
    model = init_model(cfg.model, torch.device("cpu"), cfg.run.seed)
    model.aux_losses = lambda: {"l2": weight * sum(p.pow(2).sum() for p in model.parameters())}
    return model


def _run(cfg, prepared, model=None):
    from slm.data.loader import TokenDataset
    from slm.tokenizer import byte_tokenizer
    from slm.train.pretrain import PretrainTask
    from slm.train.trainer import train

    tok = byte_tokenizer()
    task = PretrainTask(TokenDataset(str(prepared)), tok.token_byte_lengths(), cfg)
    return train(cfg, task, tokenizer=tok, model=model, progress=False)


def test_aux_losses_are_trained_logged_and_accumulation_invariant(tmp_path, prepared):
    one_cfg = tiny_config(tmp_path / "a", prepared, steps=2, batch_size=8, grad_accum=1)
    one_model = _with_aux(one_cfg)
    expected_aux = float(one_model.aux_losses()["l2"].detach())
    one = _run(one_cfg, prepared, one_model)
    four_cfg = tiny_config(tmp_path / "b", prepared, steps=2, batch_size=2, grad_accum=4)
    four = _run(four_cfg, prepared, _with_aux(four_cfg))
    plain = run_tiny(tiny_config(tmp_path / "c", prepared, steps=2, batch_size=8), prepared)
    first = next(r for r in one.history if r["kind"] == "train")
    assert first["aux_l2"] == pytest.approx(expected_aux, rel=1e-5)  # logged as the per-batch mean it is
    assert train_losses(one)[1] == train_losses(plain)[1]  # the logged loss is the task's alone
    wa, wb, wp = (r.checkpoint for r in (one, four, plain))
    from slm import checkpoint as ckpt

    a, b, p = ckpt.load_state_dict(wa), ckpt.load_state_dict(wb), ckpt.load_state_dict(wp)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    assert any(not torch.equal(a[k], p[k]) for k in a)  # the aux loss did reach the gradient


def test_train_imports_nothing_above_it():
    """Layers point down: train/ never imports posttrain, generate, eval, export, cli or the recipe stages."""
    above = {"posttrain", "generate", "eval", "export", "cli", "stages", "pipeline", "serve", "report"}
    train_dir = Path(__file__).parents[2] / "src" / "slm" / "train"
    for path in train_dir.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                parts = (node.module or "").split(".")
                top = parts[1] if parts[0] == "slm" and len(parts) > 1 else parts[0] if node.level == 2 else None
                assert top not in above, f"{path.name} imports slm.{node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    assert not (parts[0] == "slm" and len(parts) > 1 and parts[1] in above), path.name


def test_final_eval_progress_bar_counts_batches_and_changes_no_metric(tmp_path, prepared, capsys):
    from slm.data.loader import TokenDataset
    from slm.models import build_model, preset_config
    from slm.tokenizer import byte_tokenizer
    from slm.train.pretrain import PretrainTask

    cfg = tiny_config(tmp_path / "run", prepared)
    task = PretrainTask(TokenDataset(str(prepared)), byte_tokenizer().token_byte_lengths(), cfg)
    task.device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(preset_config("test", vocab_size=320))
    quiet = task.evaluate(model, 32, 3)
    assert "final eval" not in capsys.readouterr().err
    shown = task.evaluate(model, 32, 3, progress=True)
    err = capsys.readouterr().err
    assert shown == quiet and "final eval" in err and "0/3 [" in err  # the bar knows its length: max_batches
