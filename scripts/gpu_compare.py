"""Compares `hone score` / `hone generate` output (JSON lines) with an oracle set's expected.json.

Used by scripts/gpu-check.sh on the GPU machine, where Python is there anyway; the same
comparisons run on CPU in tests/cli_oracle.rs. Tolerances are relative, |got - want| / max(1, |want|):
f32 losses and log-probs to 1e-4 (the issue's bar for CUDA f32: cuBLAS sums in another order than
the CPU kernels), greedy ids exact. Prints one line per check and exits non-zero on any failure.

usage: gpu_compare.py EXPECTED.json KIND OUTPUT.jsonl   (KIND: sft | conversational | plain | generation)
"""

import json
import sys

TOL = 1e-4


def close(got, want):
    return abs(got - want) <= TOL * max(1.0, abs(want))


def main():
    expected_path, kind, output_path = sys.argv[1:4]
    expected = json.load(open(expected_path, encoding="utf-8"))
    lines = [json.loads(line) for line in open(output_path, encoding="utf-8") if line.strip()]
    failures = []
    checked = 0

    def check(what, got, want):
        nonlocal checked
        checked += 1
        if not close(got, want):
            failures.append(f"{what}: got {got}, want {want}")

    if kind == "sft":
        for i, case in enumerate(expected["sft"]["examples"]):
            check(f"sft[{i}].loss", lines[i]["loss"], case["loss"])
            check(f"sft[{i}].logp", lines[i]["logp"], -case["nll_sum"])
        check("sft.batch.loss", lines[-1]["summary"]["loss"], expected["sft"]["batch"]["loss"])
    elif kind in ("conversational", "plain"):
        cases = expected["dpo"][kind]
        for i, case in enumerate(cases["examples"]):
            for key in ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps"):
                check(f"{kind}[{i}].{key}", lines[i][key], case[key])
            check(f"{kind}[{i}].loss", lines[i]["loss"], case["dpo_sigmoid_loss"])
        check(f"{kind}.batch.loss", lines[-1]["summary"]["loss"], cases["batch"]["dpo_sigmoid_loss"])
    elif kind == "generation":
        for i, case in enumerate(expected["generation"]):
            checked += 1
            if lines[i]["new_token_ids"] != case["new_token_ids"]:
                failures.append(f"generation[{i}]: got {lines[i]['new_token_ids']}, want {case['new_token_ids']}")
    else:
        sys.exit(f"unknown kind {kind!r}")

    for failure in failures:
        print("FAIL", failure)
    print(f"{kind}: {checked - len(failures)}/{checked} within {'exact ids' if kind == 'generation' else TOL}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
