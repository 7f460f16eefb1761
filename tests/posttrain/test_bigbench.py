"""BIG-bench conversion on tiny hand-written task files (no download): shapes load as SFT, DPO and GRPO data."""

import json

from slm.posttrain import bigbench
from slm.posttrain.data import BadExamples, load_conversations, load_preferences, load_prompts
from slm.tokenizer.chat_template import ChatFormatter


def _task(base, name, task):
    (base / name).mkdir(parents=True)
    (base / name / "task.json").write_text(json.dumps(task))


def test_conversion_feeds_every_loader(tok, tmp_path):
    base = tmp_path / bigbench.ROOT
    for t in bigbench.TASKS:
        (base / t).mkdir(parents=True)
    _task(base, "natural_instructions/subtask001_x", {"task_prefix": "Definition: copy.", "examples": [
        {"input": "abc", "target": ["abc"]}, {"input": "d", "target": "d"}]})
    _task(base, "hhh_alignment/helpful", {"examples": [
        {"input": "Help?", "target_scores": {"Sure, here is how.": 1, "No.": 0}}]})
    for sub in ("1_digit_addition", "1_digit_subtraction", "2_digit_addition", "2_digit_subtraction"):
        _task(base, f"arithmetic/{sub}", {"examples": [{"input": "What is 1 plus 2?", "target": "3"}]})
    assert bigbench.fetch_tasks(tmp_path) == base  # already extracted: no download
    out = tmp_path / "out"
    for name, records in (("sft", list(bigbench.sft_records(base))), ("dpo", list(bigbench.dpo_records(base))),
                          ("grpo", list(bigbench.grpo_records(base)))):
        n_train, n_val = bigbench.write_split(records, out, name, 0.0)
        assert n_train == len(records) and n_val == 0
    f = ChatFormatter(tok)
    sft = load_conversations([str(out / "sft_train.jsonl")], f, 500, BadExamples())
    assert len(sft) == 2 and "Definition: copy.\n\nabc" in tok.decode(sft[0].ids)
    pairs = load_preferences([str(out / "dpo_train.jsonl")], f, 500, BadExamples())
    assert tok.decode([i for i, m in zip(pairs[0].rejected.ids, pairs[0].rejected.mask) if m]) == "No.<|im_end|>"
    prompts = load_prompts([str(out / "grpo_train.jsonl")], BadExamples(), need_answer=True)
    assert len(prompts) == 4 and prompts[0].answer == "3"
    # conversation files double as prompt files (distill generate reads the SFT data's prompts)
    assert load_prompts([str(out / "sft_train.jsonl")], BadExamples())[0].messages[-1]["role"] == "user"
