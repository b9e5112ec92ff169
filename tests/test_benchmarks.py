"""benchmarks/train_throughput.py: the CPU end-to-end smoke run and the FLOP formula. Speed is never asserted."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "train_throughput.py"


@pytest.fixture(scope="module")
def bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(text: str) -> dict[str, dict[str, str]]:
    """The result table's rows by configuration, as {column header: cell}."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        row = dict(zip(header, cells))
        rows[row["configuration"]] = row
    return rows


def test_tiny_cpu_run_end_to_end(tmp_path):
    out = tmp_path / "bench.md"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", "tiny", "--seq", "256", "--steps", "3",
                           "--warmup", "1", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(proc.stdout)
    assert set(rows) == {"dojo", "baseline"}
    for name, row in rows.items():
        assert row["model"] == "tiny" and row["seq"] == "256"
        assert float(row["real tokens/s"].replace(",", "")) > 0, (name, row)
        assert float(row["real tokens/step"].replace(",", "")) > 0
    assert "dojo / baseline real tokens/s" in proc.stdout
    assert "6·N + 12·n_layers·A·s_eff" in proc.stdout
    assert out.read_text(encoding="utf-8").strip() == proc.stdout.strip()   # --out appends the same table


def test_flops_formula_hand_computed(bench):
    from transformers import Qwen3Config

    # hidden 64, 2 layers, 4 heads x head_dim 32 (attention width 128 != hidden), 2 kv heads, MLP 128, vocab 100
    config = Qwen3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=32, intermediate_size=128, vocab_size=100, tie_word_embeddings=True)
    # per layer: q 64x128 + k 64x64 + v 64x64 + o 128x64 = 24,576; gate/up/down 3 x 64x128 = 24,576
    # N = 2 x 49,152 + lm_head 100x64 = 104,704
    assert bench.matmul_params(config) == 104_704
    # 6 x 104,704 + 12 x 2 layers x 128 x seq 10 = 628,224 + 30,720
    assert bench.flops_per_token(config, 10) == 658_944
    assert bench.flops_per_token(config, 10, recompute=True) == pytest.approx(658_944 * 4 / 3)


def test_matmul_params_match_the_built_model(bench):
    import torch
    from transformers import AutoModelForCausalLM

    config = bench.model_config("tiny")
    model = AutoModelForCausalLM.from_config(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert bench.matmul_params(config) == linear   # lm_head is a Linear (its weight tied to the embeddings)


def test_peak_tflops_by_gpu_name(bench):
    assert bench.peak_tflops_for("NVIDIA H100 80GB HBM3") == 989
    assert bench.peak_tflops_for("NVIDIA H100 PCIe") == 756
    assert bench.peak_tflops_for("NVIDIA H200") == 989
    assert bench.peak_tflops_for("NVIDIA A100-SXM4-80GB") == 312
    assert bench.peak_tflops_for("NVIDIA GeForce RTX 4090") == 165
    assert bench.peak_tflops_for("NVIDIA GeForce RTX 3090") == 71
    assert bench.peak_tflops_for("Tesla T4") is None
    assert bench.peak_tflops_for(None) is None


def test_plan_gives_both_configurations_the_same_examples(bench):
    work = bench.plan(seq=512, micro_batch=2, n_steps=6, vocab=100)
    dojo_tokens = [sum(len(r) for r in step) for step in work["dojo"]]
    base_tokens = [sum(len(e) for e in step) for step in work["baseline"]]
    assert len(work["dojo"]) == len(work["baseline"]) == 6
    assert sum(dojo_tokens) == sum(base_tokens)      # the same examples, cut differently
    assert all(max(r.lengths) <= 256 and min(r.lengths) >= 64 for step in work["dojo"] for r in step)
    for step in work["baseline"]:                      # about dojo's average real tokens per step
        assert abs(sum(len(e) for e in step) - work["target_tokens"]) <= 256
    ex = work["baseline"][0][0]
    assert all(label == -100 for label in ex.labels[:len(ex) // 4])
    assert list(ex.labels[len(ex) // 4:]) == list(ex.input_ids[len(ex) // 4:])


def test_gpu_report_from_suite_results(tmp_path):
    """benchmarks/gpu_report.py (what benchmarks/gpu_suite.sh ends with): MFU = model FLOPs / s / peak, the ratio
    of one run's pair, the attention verdict and the 18.6 GB check, from hand-made results."""
    import json

    def result(configuration, tps, **kw):
        r = {"configuration": configuration, "model": "qwen3-0.6b", "seq": 2048, "device": "cuda", "gpu": "NVIDIA H200",
             "attention": "sdpa", "gradient_checkpointing": False, "optimizer": "adamw", "tokens_per_s": tps,
             "seconds": 2.0, "model_flops": 989e12 * 2.0 * 0.5, "peak_tflops": 989.0, "peak_bytes": 10 << 30,
             "torch_max_allocated": 9 << 30, "vram_estimate": {"resident": 11 << 30}}
        return r | kw

    (tmp_path / "throughput.jsonl").write_text("\n".join(json.dumps(r) for r in (
        result("baseline", 1000.0), result("dojo", 1500.0))) + "\n")
    (tmp_path / "attention.jsonl").write_text("\n".join(json.dumps(r) for r in (
        result("dojo", 1000.0), result("dojo", 1300.0, attention="flex_attention"))) + "\n")
    (tmp_path / "memory_4b.jsonl").write_text(json.dumps(result("dojo", 100.0, model="qwen3-4b",
                                                                peak_bytes=int(17e9))) + "\n")
    (tmp_path / "status.txt").write_text("missing flash_attn\n")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_report.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "| 50.0% |" in out                                  # 0.5 x peak for 2 s
    assert "dojo / baseline tokens/s **1.50×**" in out
    assert "+10.0%" in out                                     # estimate 11 GiB vs NVML 10 GiB
    assert "flex / sdpa 1.30× → flex_attention" in out
    assert "17.0 GB vs 18.6 GB: under" in out
    assert "missing flash_attn" in out


def test_bin_generalisation_scores_the_training_space_against_the_held_out_set(tmp_path, capsys):
    """benchmarks/bin_generalisation.py on a real (2-step) level-2 checkpoint: both sets answered, the sample drawn
    from outside the eval set, level 1 (nothing held out) refused with the reason."""
    import importlib.util
    import json

    from dojo import config
    from dojo.generate import generate_file
    from model.train import train_chunk
    from skills import bin as bin_skill

    spec = importlib.util.spec_from_file_location("bin_generalisation", ROOT / "benchmarks" / "bin_generalisation.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    (tmp_path / "dojo.yaml").write_text(f"storage: {{root: {tmp_path / 'root'}}}\ndata: {{max_length: 128}}\n"
                                        "train: {warmup_steps: 1}\neval: {max_new_tokens: 12}\n")
    cfg = config.load(str(tmp_path / "dojo.yaml"), env={})
    checkpoint = train_chunk(cfg, generate_file("bin", 2, 40, 3, tmp_path / "bin2.jsonl"), steps=2).checkpoint
    assert gen.main([str(checkpoint), "--config", str(tmp_path / "dojo.yaml"), "--sample", "30"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert not {p.key for p in gen.training_sample(2, 10_000)} & bin_skill.held_out_keys(2)
    assert len(gen.training_sample(2, 10_000)) == len(bin_skill.enumerate_problems(2)) - len(bin_skill.eval_keys(2))
    assert out["training_space"]["n"] == 30 and out["held_out"]["n"] == len(bin_skill.eval_problems(2))
    assert set(out["held_out"]["by_op"]) == set(bin_skill.LEVEL_OPS[2])
    assert out["gap"] == round(out["training_space"]["accuracy"] - out["held_out"]["accuracy"], 3)
    assert gen.main([str(checkpoint), "--config", str(tmp_path / "dojo.yaml"), "--level", "1"]) == 2
    assert "nothing is held out" in capsys.readouterr().err


def test_demo_time_reports_a_run_stopped_early_as_such():
    """A demo_time run stopped by a signal says so in its table rather than 'not mastered within 60 min'."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_time", ROOT / "benchmarks" / "demo_time.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    result = {"level": 2, "mastered_s": None, "levels_s": {1: 389.0}, "timeline": [(389.0, "BIN level 1 mastered"),
              (1900.0, "stopped early by SIGTERM")], "promotions": [], "evaluations": 72, "load_start": 1.0,
              "load_end": 2.0, "timeout_min": 60, "cpu_s": {}, "wall_s": 1900.0, "stopped_early": True}
    text = demo.markdown(result, "python benchmarks/demo_time.py --level 2", ROOT / "dojo.yaml")
    assert "not mastered; stopped early at 31.7 min" in text and "within 60 min" not in text
    assert "stopped early by SIGTERM" in text
    assert "within 60 min" in demo.markdown({**result, "stopped_early": False}, "x", ROOT / "dojo.yaml")
