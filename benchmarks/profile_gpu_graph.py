"""Where the device time of one model call goes, kernel by kernel.

all-MiniLM-L6-v2 fused fp16 (the graph the embedder runs on a GPU), fixed
batch shapes, IOBinding as in the embedder. For each shape: the wall time per
call under each attention-kernel mask, then the GPU time of every CUDA kernel
(and copy) of one profiled run, from CUPTI through torch's profiler.

    python benchmarks/profile_gpu_graph.py --source MINILM_ST_DIR

Writes benchmarks/results/gpu_profile_<device>.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_gpu import gpu_name, prepare_model  # noqa: E402
from benchmarks.common import machine, write_device_results  # noqa: E402

SHAPES = [(1024, 64), (512, 128), (256, 256)]


def _session(model: Path, kernels: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    cuda: dict[str, Any] = {"device_id": 0}
    if kernels:
        cuda["sdpa_kernel"] = kernels
    return ort.InferenceSession(str(model), opts, providers=[("CUDAExecutionProvider", cuda), "CPUExecutionProvider"])


def _feeds(sess: ort.InferenceSession, rows: int, width: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, size=(rows, width)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[rows // 2 :, width // 2 :] = 0  # half the rows padded to half length
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {i.name: feeds[i.name] for i in sess.get_inputs()}


def _call(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> None:
    binding = sess.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    binding.bind_output(sess.get_outputs()[0].name)
    sess.run_with_iobinding(binding)
    binding.copy_outputs_to_cpu()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, required=True)
    ap.add_argument("--kernels", default="0,1,2,23")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    data: dict[str, Any] = {"benchmark": "gpu_profile", "device": gpu_name(), "machine": machine(), "shapes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model = prepare_model(args.source, Path(tmp)) / "model.fp16.onnx"
        for rows, width in SHAPES:
            entry: dict[str, Any] = {"ms_per_call": {}}
            for k in (int(x) for x in args.kernels.split(",")):
                sess = _session(model, k)
                feeds = _feeds(sess, rows, width)
                for _ in range(3):
                    _call(sess, feeds)
                t0 = time.perf_counter()
                for _ in range(args.reps):
                    _call(sess, feeds)
                entry["ms_per_call"][f"kernels={k}"] = round((time.perf_counter() - t0) / args.reps * 1e3, 3)
            # Kernel times from CUPTI, through torch's profiler: it sees every CUDA kernel of the
            # process, ONNX Runtime's included (ONNX Runtime's own profiler times launches only).
            import torch
            from torch.profiler import ProfilerActivity, profile

            sess = _session(model, 23)
            feeds = _feeds(sess, rows, width)
            for _ in range(3):
                _call(sess, feeds)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(args.reps):
                    _call(sess, feeds)
                torch.cuda.synchronize()
            kernels: collections.Counter[str] = collections.Counter()
            for ev in prof.events():
                if ev.device_type == torch.autograd.DeviceType.CUDA:
                    kernels[ev.name[:90]] += ev.time_range.elapsed_us()
            total = sum(kernels.values())
            entry["gpu_us_per_call_total"] = round(total / args.reps, 1)
            entry["gpu_us_per_call_top"] = {name: round(us / args.reps, 1) for name, us in kernels.most_common(25)}
            data["shapes"][f"{rows}x{width}"] = entry
            print(f"{rows}x{width}", json.dumps(entry), flush=True)
    out = write_device_results("gpu_profile", data)
    print(out)


if __name__ == "__main__":
    main()
