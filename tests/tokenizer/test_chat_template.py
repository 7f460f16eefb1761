"""Chat rendering: the assistant-only mask is exact, prompts match training ids, bad messages are named."""

import pytest

from slm.errors import SlmError
from slm.tokenizer import byte_tokenizer
from slm.tokenizer.chat_template import ChatFormatter, message_problem, render_conversation

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def test_chatml_text_and_exact_assistant_mask(tok):
    r = render_conversation(tok, CONV)
    text = tok.decode(r.ids)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n")
    trained = [i for i, m in zip(r.ids, r.mask) if m]
    assert tok.decode(trained) == "Hello!<|im_end|>4<|im_end|>"
    # the mask is contiguous per assistant turn: exactly two runs
    runs = sum(1 for a, b in zip([False] + r.mask, r.mask) if b and not a)
    assert runs == 2
    assert len(r.ids) == len(r.mask)


def test_prompt_ids_are_a_prefix_of_training_ids(tok):
    f = ChatFormatter(tok)
    full = f.encode(CONV)
    prompt = f.encode_prompt(CONV[:3 + 1])  # system, user, assistant, user -> ask for the 2nd reply
    assert full.ids[:len(prompt)] == prompt
    assert not any(full.mask[:len(prompt)]) or tok.decode(
        [i for i, m in zip(prompt, full.mask) if m]) == "Hello!<|im_end|>"
    assert full.mask[len(prompt)]  # the first token after the prompt is trained


def test_end_of_turn_token_and_system_prompt(tok):
    f = ChatFormatter(tok, system_prompt="You are slm.")
    assert f.end_of_turn_id == tok.token_to_id("<|im_end|>")
    r = f.encode([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    assert tok.decode(r.ids).startswith("<|im_start|>system\nYou are slm.<|im_end|>")
    # an own system message wins over the configured one
    r2 = f.encode(CONV)
    assert "You are slm." not in tok.decode(r2.ids)


def test_custom_template_without_end_token_trains_whole_reply(tok):
    tmpl = ("{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }}\n{% else %}"
            "A: {{ m['content'] }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}A: {% endif %}")
    f = ChatFormatter(tok, tmpl)
    r = f.encode([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])
    assert tok.decode(r.ids) == "Q: x\nA: y\n"
    assert tok.decode([i for i, m in zip(r.ids, r.mask) if m]) == "y\n"
    assert f.end_of_turn_id == tok.eos_id


def test_non_prefix_stable_template_is_refused(tok):
    tmpl = "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(SlmError, match="prefix-stable"):
        ChatFormatter(tok, tmpl).encode([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])


def test_bad_template_syntax_is_one_line_error(tok):
    with pytest.raises(SlmError, match="jinja syntax error"):
        ChatFormatter(tok, "{% for m in messages %}")


@pytest.mark.parametrize("messages, phrase", [
    ([{"content": "hi"}], "no 'role'"),
    ([{"role": "robot", "content": "hi"}], "unknown role 'robot'"),
    ([{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}], "empty content"),
    ([{"role": "user", "content": "hi"}], "no assistant message"),
    ([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}], "not the first"),
    ([], "non-empty list"),
    ([{"role": "user", "content": 3}], "no string 'content'"),
])
def test_message_problems_are_named(messages, phrase):
    assert phrase in message_problem(messages)


def test_special_token_text_in_content_is_a_problem(tok):
    f = ChatFormatter(tok)
    msgs = [{"role": "user", "content": "x<|im_end|>"}, {"role": "assistant", "content": "y"}]
    assert "special token" in message_problem(msgs, specials=f.specials)


SMOLLM2_TEMPLATE = (  # SmolLM2-Instruct's own template: it adds a default system prompt when there is none
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_smollm2_template_mask_and_default_system_prompt(tok):
    f = ChatFormatter(tok, SMOLLM2_TEMPLATE)
    r = f.encode(CONV[1:])
    text = tok.decode(r.ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert tok.decode([i for i, m in zip(r.ids, r.mask) if m]) == "Hello!<|im_end|>4<|im_end|>"
    assert f.end_of_turn_id == tok.token_to_id("<|im_end|>")
    assert r.ids == tok.encode(text)  # segment-wise encoding equals the joint encoding for ChatML-style templates
