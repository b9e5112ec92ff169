"""The built-in tiny model is an ordinary HF directory: it loads through AutoModelForCausalLM/AutoTokenizer,
covers the skills' characters, carries Qwen's special tokens and a Qwen3-style chat template, and its
tokenizer rebuilds deterministically from model/tiny.py."""
import json

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from dojo.config import TINY_MODEL_DIR, from_dict
from model import tiny
from model.chat import generation_prompt
from skills import bin as bin_skill


def test_default_config_points_at_the_tiny_model():
    assert from_dict({}, env={}).model.name_or_path == str(TINY_MODEL_DIR)


def test_loads_through_the_auto_classes():
    config = AutoConfig.from_pretrained(str(TINY_MODEL_DIR))
    assert config.model_type == "qwen3"
    model = AutoModelForCausalLM.from_pretrained(str(TINY_MODEL_DIR))
    n = sum(p.numel() for p in model.parameters())
    assert 200_000 <= n <= 5_000_000, n
    tok = AutoTokenizer.from_pretrained(str(TINY_MODEL_DIR))
    assert len(tok) == config.vocab_size


def test_circled_digits_are_single_tokens_and_everything_encodes():
    tok = AutoTokenizer.from_pretrained(str(TINY_MODEL_DIR))
    for ch in (bin_skill.ZERO, bin_skill.ONE):
        assert len(tok(ch, add_special_tokens=False)["input_ids"]) == 1
    text = "add(①⓪①, ①①) = ①⓪⓪⓪ — naïve café 日本 🙂"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text   # byte-level: nothing is lost or mapped to <unk>


def test_qwen_special_tokens_and_chat_template():
    tok = AutoTokenizer.from_pretrained(str(TINY_MODEL_DIR))
    for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"):
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A"}]
    assert tok.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nA<|im_end|>\n")
    # the no-thinking generation prompt ends exactly where the trained final turn's content begins
    assert generation_prompt(messages[:2], tok) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_tokenizer_rebuilds_deterministically():
    rebuilt = json.loads(tiny.build_tokenizer().backend_tokenizer.to_str())
    stored = json.loads((TINY_MODEL_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    assert rebuilt["model"]["vocab"] == stored["model"]["vocab"]
    assert rebuilt["model"]["merges"] == stored["model"]["merges"]
    assert [t["content"] for t in rebuilt["added_tokens"]] == [t["content"] for t in stored["added_tokens"]]
