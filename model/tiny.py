"""The built-in tiny base model: a small random Qwen3 and the project's own byte-level BPE tokenizer.

It is an ordinary HF model directory (``config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json``, ``chat_template.jinja``) stored in ``model/assets/tiny-qwen3/``, so it loads through
the same ``AutoModelForCausalLM`` / ``AutoTokenizer`` path as ``Qwen/Qwen3-0.6B``. Rebuild it with

    python -m model.tiny --out model/assets/tiny-qwen3

The tokenizer follows Qwen2/3's pipeline (NFC, Qwen's split regex, byte-level BPE), so any text encodes, and
is trained on a fixed corpus that covers the skills' characters (⓪ ① are single tokens). It carries Qwen's
special tokens and a Qwen3-style chat template (an empty think block before the final assistant turn, and
``enable_thinking=False`` generation prompts that match it).
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

from skills import bin as bin_skill

VOCAB_SIZE = 1024
SEED = 0

# Qwen3's special/added tokens, in Qwen's order. The first three are the ones dojo relies on.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# In Qwen3 these are added tokens but not "special" (they survive decode(skip_special_tokens=True)).
ADDED_TOKENS = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
                "<think>", "</think>"]

# Qwen2/Qwen3's pre-tokenizer split pattern (digits and other numeric characters split one by one).
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Qwen3-style chat template. Differences from Qwen3's: no tool calling; a system message anywhere but first
# and unknown roles raise instead of rendering silently.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(last_query_index=-1) %}"
    "{%- for message in messages %}{%- if message.role == 'user' %}{%- set ns.last_query_index = loop.index0 %}"
    "{%- endif %}{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' %}"
    "{%- if not loop.first %}{{- raise_exception('a system message must come first') }}{%- endif %}"
    "{{- '<|im_start|>system\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'user' %}"
    "{{- '<|im_start|>user\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set content = message.content %}{%- set reasoning_content = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n'"
    " + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- else %}{{- raise_exception('unknown role: ' + message.role) }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)

ENGLISH = """\
You are a careful assistant. Answer in exactly the format asked for. Today is a good day to learn.
Is this answer correct? It is incorrect. It is correct. Find the correct solution. Compute the result.
The quick brown fox jumps over the lazy dog. A family is a social unit living together.
Respond naturally and concisely. Current date: {date}. Think step by step, then answer.
Solve the puzzle: use the syllable tiles to build each word. Unused tiles are listed at the end.
{"solutions":[{"ans_num":1,"syllables":["fam","i","ly"],"answer":"FAMILY"}],"unused_tiles":["ro"]}
definition synonym category clue word words answer answers solution solutions syllable syllables tile tiles
add subtract multiply leftshift rightshift tobinary todecimal binary decimal number numbers digit digits
0 1 2 3 4 5 6 7 8 9 10 100 1000 2026 the of and to in is that it for on with as was at by be this are
"""


def _corpus_problems(level: int, count: int = 400) -> list:
    """The BIN problems of the stored tokenizer's corpus: what ``skills.bin.generate(level, 400, seed=0)`` drew at
    generator 1.0.0, frozen here so the curriculum generator can change (1.1.0 holds out across levels) without
    changing the tokenizer that the built-in model's embeddings were made for. Same draws: the 1.0.0 seed string,
    a uniform op, ``_sample_args``, re-drawn while in the level's 1.0.0 eval set (level 1: none held out)."""
    def eval_keys_1_0_0(lv: int) -> frozenset[str]:
        if bin_skill.covers_space(lv):
            return frozenset()
        draw, ops, keys = random.Random(f"bin:eval:{bin_skill.EVAL_SEED}:{lv}"), bin_skill.LEVEL_OPS[lv], []
        while len(keys) < bin_skill.EVAL_SIZE:
            op = ops[len(keys) % len(ops)]
            key = bin_skill.Problem(op, bin_skill._sample_args(draw, op, lv), lv).key
            if key not in keys:
                keys.append(key)
        return frozenset(keys)

    rng, held, ops = random.Random(f"bin:1.0.0:{level}:{SEED}"), eval_keys_1_0_0(level), bin_skill.LEVEL_OPS[level]
    out = []
    for _ in range(count):
        op = rng.choice(ops)
        problem = bin_skill.Problem(op, bin_skill._sample_args(rng, op, level), level)
        while problem.key in held:
            problem = bin_skill.Problem(op, bin_skill._sample_args(rng, op, level), level)
        out.append(problem)
    return out


def corpus() -> list[str]:
    """The fixed tokenizer training corpus: rendered BIN problems of every level and some English."""
    rng = random.Random(SEED)
    texts = [ENGLISH] * 20
    for level in bin_skill.LEVELS:
        for problem in _corpus_problems(level):
            texts.append(f"<|im_start|>user\n{problem.prompt}<|im_end|>\n<|im_start|>assistant\n"
                         f"<think>\n\n</think>\n\n{problem.completion}<|im_end|>\n")
    rng.shuffle(texts)
    return texts


def build_tokenizer():
    """Train the byte-level BPE tokenizer deterministically and wrap it as an HF fast tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS) - len(ADDED_TOKENS), min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(corpus(), trainer=trainer)
    from tokenizers import AddedToken
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        bos_token=None, model_max_length=2048, clean_up_tokenization_spaces=False, split_special_tokens=False)
    hf.chat_template = CHAT_TEMPLATE
    return hf


def build_config(tokenizer):
    """A ~1M-parameter Qwen3: 4 layers, hidden 128, GQA 4/2 heads, tied embeddings."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=2048,
        rope_theta=10000.0, tie_word_embeddings=True, rms_norm_eps=1e-6,
        bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id, torch_dtype="float32")


def build(out: Path) -> Path:
    """Write the tiny model directory to ``out`` (weights from a fixed seed)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    tokenizer = build_tokenizer()
    config = build_config(tokenizer)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[config.eos_token_id, tokenizer.pad_token_id], pad_token_id=tokenizer.pad_token_id,
        do_sample=False)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    path = build(args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
