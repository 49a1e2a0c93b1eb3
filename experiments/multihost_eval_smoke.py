"""Multi-host smoke test of evaluation: candidate scoring and greedy generation with each pass's rows
split over the processes (``--mesh data=2``), parameters FSDP-sharded.

Run the same command on every process (each joins through :func:`zojax.distributed.initialize`, from
``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``); every process writes the
results it fetched, ``OUT.p{process_index}.json`` (``--mesh none``: the one-device reference).
``tests/test_multihost.py`` runs it on two processes on loopback and compares with one device.

The model is ``random:tiny`` with its layer weights ×8, so that greedy generations differ by prompt
and stop after different numbers of tokens; 7 SST-2 examples (14 sequences) and 7 SQuAD prompts in
passes of about 3 rows, rounded up to 4 (a multiple of ``data``) and filled with rows that are dropped.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def examples(name: str, n: int) -> list[Any]:
    """``n`` synthetic examples of ``sst2`` or ``squad``."""
    from zojax.tasks import get_task

    if name == "sst2":
        rows = [{"sentence": f"a film {i} that is {'good' if i % 2 else 'dull'} .", "label": i % 2, "idx": i}
                for i in range(n)]  # fmt: skip
    else:
        rows = [{"id": f"q{i}", "title": "T", "context": f"Ctx {i} is" + " here" * i + ".", "question": f"What is {i}?",
                 "answers": {"text": [f"Ctx {i}"], "answer_start": [0]}} for i in range(n)]  # fmt: skip
    return [get_task(name).build(r, i) for i, r in enumerate(rows)]


def main(argv: list[str] | None = None) -> int:
    """Evaluates on this process's share of the job and writes what it fetched."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--num-cpu-devices", type=int, default=None, help="CPU devices per process")
    ap.add_argument("--mesh", default="auto", help="--mesh of zojax finetune (none: one device)")
    ap.add_argument("--out", required=True, help="write OUT.p{process_index}.json")
    args = ap.parse_args(argv)
    from zojax.distributed import initialize

    initialize(num_cpu_devices=args.num_cpu_devices)
    import jax

    from zojax.tasks import evaluate, get_task
    from zojax.train import build_model
    from zojax.train.placement import Placement, mesh_name, parse_mesh

    model, base = build_model("random:tiny")
    tok = model.tokenizer
    sharp = {**base, "layers": jax.tree.map(lambda x: 8 * x if x.ndim == 3 else x, base["layers"])}
    where = Placement(parse_mesh(args.mesh))
    params = where.params(sharp)

    def generate_fn(prompts: list[list[int]]) -> list[list[int]]:
        return model.generate_batch(params, prompts, max_new_tokens=6, stop_strings=("\n",), placement=where)

    # budgets of 3 rows a pass (prompt + new tokens: 96 tokens; SST-2 sequences: 48), 4 on data=2
    gen = evaluate(get_task("squad"), examples("squad", 7), tok, generate_fn=generate_fn, token_budget=3 * 96,
                   max_new_tokens=6, progress=False, placement=where)  # fmt: skip
    cand = evaluate(get_task("sst2"), examples("sst2", 7), tok, logits_fn=model.logits,
                    params=where.params(base), token_budget=3 * 48, pad_to_multiple_of=8, progress=False,
                    placement=where)  # fmt: skip
    out = {
        "process_count": jax.process_count(),
        "mesh": mesh_name(where.mesh),
        "generations": gen.predictions,
        "f1": gen.value,
        "scores": cand.scores,
        "predictions": cand.predictions,
        "accuracy": cand.value,
        "forward_passes": cand.stats["forward_passes"],
    }
    with open(f"{args.out}.p{jax.process_index()}.json", "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
