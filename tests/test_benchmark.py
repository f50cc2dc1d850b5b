"""benchmarks/benchmark.py in its tiny mode, for real: our loop, the plain step and TRL's three trainers on a
tiny Qwen3, generation and one toy evaluation job; the JSON has the schema results/README.md documents
and BENCHMARKS.md gets one dated row. (The figures of a tiny run mean nothing; the shapes do.)"""

from __future__ import annotations

import sys
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

NUM = {"type": "number", "exclusiveMinimum": 0}
ARM = {
    "type": "object",
    "required": ["median_s", "times_s", "split_s", "tokens_per_s", "flop_per_s", "fraction_of_peak"],
    "properties": {"median_s": NUM, "tokens_per_s": NUM, "flop_per_s": NUM, "fraction_of_peak": NUM,
                   "times_s": {"type": "array", "items": NUM, "minItems": 1},
                   "split_s": {"type": "object", "additionalProperties": {"type": "number"}}},
}


def section(arms: list[str], split: list[str] = ()) -> dict:
    arm = {**ARM, "properties": {**ARM["properties"], "split_s": {
        "type": "object", "required": list(split), "additionalProperties": {"type": "number"}}}}
    return {"type": "object", "required": ["tokens_per_step", "arms"],
            "properties": {"tokens_per_step": NUM, "arms": {"type": "object", "required": arms,
                                                            "additionalProperties": arm}}}


RATIOS = ["sft_ours_over_trl", "sft_ours_over_plain", "sft_fused_over_loop_adamw", "opd_ours_over_trl",
          "grpo_ours_over_trl", "generation_ours_over_plain", "rollout_ours_over_plain", "sft_mfu"]
SCHEMA = {
    "type": "object",
    "required": ["schema", "date", "mode", "device", "dtype", "machine", "loadavg_start", "loadavg_end", "settings",
                 "model", "peak", "sft", "opd", "grpo", "generation", "evaluation", "ratios", "targets", "wall_s"],
    "properties": {
        "schema": {"const": 1},
        "mode": {"const": "tiny"},
        "machine": {"type": "object", "required": ["nproc", "cpu", "gpu", "torch_threads"]},
        "loadavg_start": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
        "model": {"type": "object", "required": ["config", "params"], "properties": {"params": NUM}},
        "peak": {"type": "object", "required": ["n", "dtype", "times_s", "flop_per_s"],
                 "properties": {"flop_per_s": NUM}},
        "sft": section(["ours", "ours_loop_adamw", "plain", "trl"]),
        "opd": section(["ours", "trl"], ["generation_s", "teacher_s", "update_s"]),
        "grpo": section(["ours", "trl"], ["generation_s", "reward_s", "update_s"]),
        "generation": {"type": "object", "required": ["prompt_len", "new_tokens", "shapes"],
                       "properties": {"shapes": {"type": "object", "minProperties": 2, "additionalProperties": {
                           "type": "object", "required": ["prompts", "samples_per_prompt", "ours", "plain",
                                                          "ours_over_plain"],
                           "properties": {"ours_over_plain": NUM}}}}},
        "evaluation": {"type": "object", "required": ["benchmark", "rows", "wall_s", "timing_s"],
                       "properties": {"rows": {"type": "integer", "minimum": 1}, "wall_s": NUM}},
        "ratios": {"type": "object", "required": RATIOS, "additionalProperties": NUM},
        "targets": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["target", "value", "met"], "properties": {"met": {"type": "boolean"}}}},
    },
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import benchmark

    tmp = tmp_path_factory.mktemp("bench")
    md = tmp / "BENCHMARKS.md"
    md.write_text("# Measurements\n\nearlier text\n")
    rec = benchmark.main(["--tiny", "--threads", "1", "--out", str(tmp / "out"), "--markdown", str(md),
                          "--steps", "1", "--before"])
    return rec, tmp / "out" / f"{rec['device']}.json", md


def test_tiny_run_writes_the_documented_json(tiny_run):
    import json

    rec, path, _ = tiny_run
    on_disk = json.loads(path.read_text())
    jsonschema.validate(on_disk, SCHEMA)
    assert on_disk["ratios"] == rec["ratios"]
    # every arm did the same work: tokens per step are one number per section
    s = on_disk["settings"]
    assert on_disk["sft"]["tokens_per_step"] == s["batch"] * (s["prompt_len"] + s["completion_len"])
    assert on_disk["grpo"]["tokens_per_step"] == s["grpo_prompts"] * s["group"] * (s["prompt_len"] + s["new_tokens"])
    assert on_disk["opd"]["tokens_per_step"] == s["opd_prompts"] * (s["prompt_len"] + s["new_tokens"])
    # the ratios are those of the arms' throughputs
    sft = on_disk["sft"]["arms"]
    assert on_disk["ratios"]["sft_ours_over_trl"] == pytest.approx(sft["ours"]["tokens_per_s"] / sft["trl"]["tokens_per_s"])
    assert on_disk["targets"]["sft_mfu"]["value"] == on_disk["ratios"]["sft_mfu"]
    # generation: both paths made every row's tokens; the rollout ratio is over the shapes with groups
    shapes = on_disk["generation"]["shapes"]
    for shape, entry in shapes.items():
        p, g = (int(x) for x in shape.split("x"))
        assert (entry["prompts"], entry["samples_per_prompt"]) == (p, g)
        assert entry["ours"]["new_tokens"] == entry["plain"]["new_tokens"] == p * g * s["gen_tokens"]
    assert on_disk["ratios"]["rollout_ours_over_plain"] == min(
        e["ours_over_plain"] for e in shapes.values() if e["samples_per_prompt"] > 1)


def test_tiny_run_appends_one_dated_row(tiny_run):
    rec, _, md = tiny_run
    text = md.read_text()
    assert text.startswith("# Measurements\n\nearlier text\n")  # what was there stays
    assert text.count("## benchmarks/benchmark.py runs") == 1
    rows = [ln for ln in text.splitlines() if ln.startswith(f"| {rec['date'][:10]}")]
    assert len(rows) == 1 and "| tiny |" in rows[0]
    assert rows[0].count("|") == text.splitlines()[-3].count("|")  # as many columns as the header
