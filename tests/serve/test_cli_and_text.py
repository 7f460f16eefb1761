"""`slm serve` exits 2 with one line on a port in use or bad flags; streamed detokenizing and stop strings."""

import socket

import pytest

import slm.cli
from slm.serve.scheduler import QueueFull
from slm.serve.text import IncrementalDecoder, StopMatcher


def test_port_in_use_is_one_line_and_exit_2(checkpoint, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = slm.cli.main(["serve", "--checkpoint", str(checkpoint), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"127.0.0.1:{port}" in err and "already in use" in err


@pytest.mark.parametrize("argv, phrase", [
    (["--max-batch", "0"], "--max-batch must be >= 1"),
    (["--port", "70000"], "--port must be <= 65535"),
    (["--threads", "-1"], "--threads must be >= 0"),
    (["--host", "no-such-host.invalid"], "--host no-such-host.invalid"),
])
def test_bad_flags_exit_2_before_loading(argv, phrase, capsys, tmp_path):
    code = slm.cli.main(["serve", "--checkpoint", str(tmp_path / "missing"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and phrase in err and err.count("\n") == 1


def test_decode_threads_leave_a_core_to_the_event_loop(monkeypatch):
    import os

    from slm.serve import decode_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert decode_threads(0) == 3 and decode_threads(2) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5}, raising=False)
    assert decode_threads(0) == 1


def test_served_model_decodes_with_the_threads_asked_for(checkpoint):
    import torch

    from slm.serve import ServeOptions, load_served

    before = torch.get_num_threads()
    try:
        load_served(checkpoint, ServeOptions(compile="false", dtype="fp32", threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_missing_checkpoint_exits_2(capsys, tmp_path):
    code = slm.cli.main(["serve", "--checkpoint", str(tmp_path / "missing"), "--port", "0"])
    assert code == 2 and "neither a checkpoint" in capsys.readouterr().err


def test_scheduler_queue_is_bounded(live):
    import asyncio

    from slm.generate import SamplingConfig
    from slm.serve.scheduler import Request

    sched = live.scheduler
    loop = asyncio.new_event_loop()
    try:
        req = Request([[1, 2]], SamplingConfig(), 4, [], frozenset(), 3, loop, asyncio.Queue())
        saved, sched.max_queue = sched.max_queue, 2
        with pytest.raises(QueueFull) as exc:
            sched.submit(req)  # 3 sequences > 2 places
        assert exc.value.retry_after >= 1
    finally:
        sched.max_queue = saved
        loop.close()


def test_incremental_decoder_holds_back_split_characters(byte_tok):
    ids = byte_tok.encode("héllo → wörld")
    dec = IncrementalDecoder(lambda t: byte_tok.decode(t, skip_special=True))
    pieces = [dec.push(i) for i in ids]
    assert "".join(pieces) + dec.finish() == "héllo → wörld"
    assert all("\ufffd" not in p for p in pieces)


def test_stop_matcher_never_sends_a_prefix_of_a_stop_string():
    m = StopMatcher(["END", "\n\n"])
    sent = [m.push(p) for p in ["abc E", "N", "x E", "ND tail"]]
    assert sent == ["abc ", "", "ENx ", ""]
    assert m.stopped and "".join(sent) == "abc ENx "
    m = StopMatcher(["END"])
    assert m.push("ab") == "ab" and m.push("cE") == "c" and m.finish() == "E"
