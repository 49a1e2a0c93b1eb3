"""Peak host RSS of loading a 1B-shaped checkpoint: sharded over 1 or 2 processes vs a full host copy.

Writes a random TinyLlama-1.1B-shaped Hugging Face folder once (Llama, hidden 2048, intermediate
5632, 22 layers, 32 heads / 4 KV heads, vocab 32000, untied head: 1,100,048,384 parameters,
bfloat16 safetensors, 2.2 GB), then measures in fresh subprocesses (``ru_maxrss``):

* ``sharded, 1 process``: :func:`zojax.models.load_model` with ``shardings=`` onto 8 host devices
  (``--mesh auto``: fsdp=8), each device's slice read from the memory map;
* ``plain load`` / ``plain load + place``: the full host copy (``params_from_hf_tensors``), then
  ``Placement.params`` onto the same 8 devices (the trainer's path before sharded loading);
* ``sharded, 2 processes``: two loopback processes (gloo, 4 host devices each) on one ``fsdp=8``
  mesh, each reading and holding its half;
* ``plain, 2 processes``: the same two processes with the full host copy each (the old multi-host
  path).

Each row also gives the RSS before loading (Python, JAX and the CPU client) and the bytes of
tensor slices the process copied out of the memory map. On CPU the "devices" are host memory, so a
process's RSS holds its shards once; on GPU/TPU the sharded path keeps only one leaf's slices on
the host at a time.

Usage::

    python experiments/sharded_load_rss.py --folder /tmp/zojax_1b --out results/sharded_load_rss.json

``worker`` (one measurement; what the main command spawns, and ``tests/test_sharded_loading.py``)::

    python experiments/sharded_load_rss.py worker --folder F --mode sharded --num-cpu-devices 8 --json r.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHAPE_1B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 32000,
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "torch_dtype": "bfloat16",
}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _current_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ----------------------------------------------------------------------------------- checkpoint
def hf_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """HF tensor names and ``(out, in)`` shapes of a Llama config."""
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    d = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * d
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not cfg.get("tie_word_embeddings", True):
        shapes["lm_head.weight"] = (v, h)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes[p + "self_attn.q_proj.weight"] = (h, h)
        shapes[p + "self_attn.k_proj.weight"] = (kv, h)
        shapes[p + "self_attn.v_proj.weight"] = (kv, h)
        shapes[p + "self_attn.o_proj.weight"] = (h, h)
        shapes[p + "mlp.gate_proj.weight"] = (f, h)
        shapes[p + "mlp.up_proj.weight"] = (f, h)
        shapes[p + "mlp.down_proj.weight"] = (h, f)
    return shapes


def write_random_checkpoint(folder: Path, cfg: dict[str, Any], seed: int = 0) -> int:
    """``config.json`` + a bfloat16 ``model.safetensors`` of N(0, 0.02²) tensors (norms 1), written
    tensor by tensor (the safetensors format by hand: u64 header size, JSON header, raw bytes).

    Returns:
      the number of parameters.
    """
    import ml_dtypes
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    shapes = hf_shapes(cfg)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    rng = np.random.default_rng(seed)
    tmp = folder / "model.safetensors.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for name, shape in shapes.items():
            if name.endswith("norm.weight"):
                x = np.ones(shape, np.float32)
            else:
                x = rng.standard_normal(shape, dtype=np.float32)
                x *= 0.02
            f.write(x.astype(ml_dtypes.bfloat16).tobytes())
    tmp.rename(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    return sum(int(np.prod(s)) for s in shapes.values())


# ----------------------------------------------------------------------------------- worker
def worker(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process: load ``--folder`` as ``--mode`` says, write JSON."""
    from zojax.distributed import initialize

    initialize(num_cpu_devices=args.num_cpu_devices)  # JAX_COORDINATOR_ADDRESS etc. from the environment
    import jax
    import numpy as np

    from zojax.models import hf, loading, sharded_loading
    from zojax.train.placement import Placement, parse_mesh

    placement = Placement(parse_mesh(args.mesh))
    jax.devices()  # the CPU client exists before the baseline is taken
    before = _current_rss_mib()
    reads: list[int] = []
    t0 = time.perf_counter()
    row: dict[str, Any] = {"mode": args.mode, "process": jax.process_index(), "processes": jax.process_count()}
    config = hf.folder_config(args.folder)
    getters = loading.open_safetensors(args.folder)
    if args.mode == "sharded":
        shapes = sharded_loading.param_shapes(config, args.dtype)
        targets = placement.param_shardings(shapes)
        params = sharded_loading.load_sharded(
            config, getters, targets, args.dtype, on_read=lambda path, index, n: reads.append(n)
        )
    else:
        host = loading.params_from_hf_tensors(config, getters, args.dtype)
        jax.block_until_ready(host)
        row["peak_rss_after_host_load_mib"] = _rss_mib()
        params = placement.params(host)
        jax.block_until_ready(params)
        reads.append(sum(x.nbytes for x in jax.tree.leaves(host)))
        del host
    jax.block_until_ready(params)
    leaves = jax.tree.leaves(params)
    local = sum(s.data.nbytes for x in leaves for s in x.addressable_shards)
    row.update(
        seconds=round(time.perf_counter() - t0, 2),
        mesh=",".join(f"{a}={n}" for a, n in placement.mesh.shape.items()) if placement.mesh else "none",
        devices=jax.local_device_count(),
        dtype=args.dtype,
        num_params=int(sum(x.size for x in leaves)),
        param_mib=sum(x.size * x.dtype.itemsize for x in leaves) / 2**20,
        local_shard_mib=local / 2**20,
        bytes_read_mib=sum(reads) / 2**20,
        rss_before_mib=before,
        peak_rss_mib=_rss_mib(),
    )
    if args.dump:  # every local shard, keyed by leaf path and index (tests)
        out = {}
        for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
            name = ".".join(str(p.key) for p in path)
            for s in x.addressable_shards:
                key = ";".join(f"{i.start}:{i.stop}" for i in sharded_loading._normalise(s.index, x.shape))
                out[f"{name}|{key}"] = np.asarray(s.data).view(np.uint8)
        np.savez(args.dump.replace(".npz", f".p{jax.process_index()}.npz"), **out)
    Path(args.json.replace(".json", f".p{jax.process_index()}.json")).write_text(json.dumps(row))


# ----------------------------------------------------------------------------------- driver
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(
    folder: str, mode: str, processes: int, devices: int, mesh: str, dtype: str, json_path: str,
    dump: str = "", timeout: float = 900,
) -> list[dict[str, Any]]:  # fmt: skip
    """Runs ``processes`` workers (loopback when more than one) and returns their rows."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != "ZOJAX_DISTRIBUTED"}
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    port = free_port()
    cmd = [sys.executable, __file__, "worker", "--folder", folder, "--mode", mode, "--mesh", mesh,
           "--num-cpu-devices", str(devices), "--dtype", dtype, "--json", json_path]  # fmt: skip
    if dump:
        cmd += ["--dump", dump]
    procs = []
    for i in range(processes):
        e = dict(env)
        if processes > 1:
            e.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes))
            e["JAX_PROCESS_ID"] = str(i)
        out = subprocess.PIPE
        procs.append(subprocess.Popen(cmd, env=e, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True))
    deadline = time.monotonic() + timeout
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise RuntimeError(f"{mode} x{processes}: timed out after {timeout} s") from None
    bad = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode]
    if bad:
        tails = "\n".join("\n".join(log.splitlines()[-15:]) for log in logs)
        raise RuntimeError(f"{mode} x{processes}: process {bad[0][0]} exited with {bad[0][1]}\n{tails}")
    return [json.loads(Path(json_path.replace(".json", f".p{i}.json")).read_text()) for i in range(processes)]


CASES = (  # label, mode, processes, devices per process, mesh
    ("sharded, 1 process", "sharded", 1, 8, "auto"),
    ("plain load + place, 1 process", "plain", 1, 8, "auto"),
    ("sharded, 2 processes", "sharded", 2, 4, "data=1,fsdp=8"),
    ("plain load + place, 2 processes", "plain", 2, 4, "data=1,fsdp=8"),
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("--folder", required=True)
    w.add_argument("--mode", choices=["sharded", "plain"], required=True)
    w.add_argument("--mesh", default="auto")
    w.add_argument("--num-cpu-devices", type=int, default=8)
    w.add_argument("--dtype", default="bfloat16")
    w.add_argument("--json", required=True)
    w.add_argument("--dump", default="")
    ap.add_argument("--folder", default="/tmp/zojax_1b", help="the checkpoint (written when missing)")
    ap.add_argument("--dtype", default="bfloat16", help="load dtype (the file is bfloat16)")
    ap.add_argument("--out", default="results/sharded_load_rss.json")
    args = ap.parse_args(argv)
    if args.cmd == "worker":
        worker(args)
        return
    folder = Path(args.folder)
    if not (folder / "model.safetensors").exists():
        t0 = time.perf_counter()
        n = write_random_checkpoint(folder, SHAPE_1B)
        print(f"wrote {folder} ({n:,} parameters) in {time.perf_counter() - t0:.0f}s", flush=True)
    rows = []
    scratch = folder / "rss"
    scratch.mkdir(exist_ok=True)
    for label, mode, processes, devices, mesh in CASES:
        json_path = str(scratch / f"{mode}{processes}.json")
        for r in run_workers(str(folder), mode, processes, devices, mesh, args.dtype, json_path):
            rows.append({"case": label, **r})
            print(json.dumps(rows[-1]), flush=True)
    print(f"{'case':<32} {'proc':>4} {'mesh':>14} {'params MiB':>10} {'local MiB':>9} {'read MiB':>8} "
          f"{'RSS before':>10} {'peak RSS MiB':>12}")  # fmt: skip
    for r in rows:
        print(f"{r['case']:<32} {r['process']:>4} {r['mesh']:>14} {r['param_mib']:>10.0f} {r['local_shard_mib']:>9.0f} "
              f"{r['bytes_read_mib']:>8.0f} {r['rss_before_mib']:>10.0f} {r['peak_rss_mib']:>12.0f}")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"checkpoint": SHAPE_1B, "dtype": args.dtype, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
