#!/usr/bin/env python3
"""verify_capture.py: check a capture run folder (docs/capture-format.md) against PyTorch,
on the CPU: the index's keys and the bundles' meta keys are the allowed ones, shapes and
dtypes agree with the index, and for every SDPA bundle the recorded out, dq, dk, dv are
what F.scaled_dot_product_attention (the math backend, or the backend named by
--backend) gives on the recorded q, k, v and dO (bit for bit with --exact, else within
--tol of the largest magnitude), and used_NAME is the output merged by heads either
correctly (transpose, then reshape) or by the raw reshape (reported which).

  python3 scripts/examples/verify_capture.py RUN [RUN...] [--exact] [--backend flash]
Exit 0 all consistent, 1 an inconsistency, 2 bad arguments or an unreadable folder.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

INDEX_KEYS = {"format", "model", "label", "loss", "info", "calls"}
CALL_KEYS = {"index", "bundle", "not_captured", "module", "op", "output", "q_shape", "k_shape",
             "dtype", "causal", "dropout_p"}
META_KEYS = {"layout", "mask", "dtype", "scale", "dropout_p", "seed", "offset", "roles", "info",
             "format", "deterministic"}


def load(path, dtype):
    a = np.load(path, allow_pickle=False)
    t = torch.from_numpy(a.copy())
    if dtype == "bf16":
        return t.view(torch.bfloat16)
    return t


def close(a, b, exact, tol):
    """(agrees, max abs difference): bit for bit when exact, else within tol x max |a|."""
    a64, b64 = a.double(), b.double()
    d = (a64 - b64).abs().max().item() if a.numel() else 0.0
    if exact:
        return bool(torch.equal(a, b)), d
    m = max(a64.abs().max().item(), 1e-30)
    return d <= tol * m, d


def verify(run, exact, tol, backend):
    problems = []
    idx = json.load(open(os.path.join(run, "capture.json")))
    extra = set(idx) - INDEX_KEYS
    if extra or idx.get("format") != "flashdrift-capture-1":
        problems.append(f"index keys {sorted(extra)} / format {idx.get('format')}")
    for i, c in enumerate(idx["calls"]):
        if set(c) - CALL_KEYS or c["index"] != i:
            problems.append(f"call {i}: keys {sorted(set(c) - CALL_KEYS)} index {c['index']}")
        if c["bundle"] is None:
            print(f"  {run} call {i} {c['module']}: not captured: {c['not_captured']}")
            continue
        bd = os.path.join(run, c["bundle"])
        meta = json.load(open(os.path.join(bd, "meta.json")))
        if set(meta) - META_KEYS:
            problems.append(f"{bd}: meta keys {sorted(set(meta) - META_KEYS)}")
        dt, N = meta["dtype"], c["output"]
        files = {f[:-4] for f in os.listdir(bd) if f.endswith(".npy")}
        t = {n: load(os.path.join(bd, n + ".npy"), dt) for n in files}
        q, k, v = t["q"], t["k"], t["v"]
        if list(q.shape) != c["q_shape"] or list(k.shape) != c["k_shape"] or dt != c["dtype"]:
            problems.append(f"{bd}: shapes/dtype disagree with the index")
        if meta["layout"] != "bhsd":
            print(f"  {bd}: layout {meta['layout']}: not recomputed")
            continue
        out = t[f"out_{N}"]
        b, h, s, d = out.shape
        used = t.get(f"used_{N}")
        how = "absent"
        if used is not None:
            if torch.equal(used, out.transpose(1, 2).reshape(b, s, h * d)):
                how = "merged correctly"
            elif torch.equal(used, out.reshape(b, s, h * d)):
                how = "RAW RESHAPE (layout bug)"
            else:
                how = "NEITHER"
                problems.append(f"{bd}: used_{N} is neither merge of out_{N}")
        causal = meta["mask"] == "causal"
        qq, kk, vv = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
        from torch.nn.attention import SDPBackend, sdpa_kernel
        be = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION}[backend]
        with sdpa_kernel(be):
            o = F.scaled_dot_product_attention(qq, kk, vv, is_causal=causal, scale=meta["scale"],
                                               enable_gqa=k.shape[1] != q.shape[1])
        ok, err = close(o.detach(), out, exact, tol)
        line = f"  {bd} {c['module']} {c['op']} {dt} mask={meta['mask']}: out {'ok' if ok else 'DIFFERS'} ({err:.3g})"
        if not ok:
            problems.append(f"{bd}: out_{N} differs from SDPA by {err:.3g}")
        if "do" in t:
            gs = torch.autograd.grad(o, (qq, kk, vv), t["do"])
            for gn, g in zip(("dq", "dk", "dv"), gs):
                okg, e = close(g, t[f"{gn}_{N}"], exact, tol)
                line += f", {gn} {'ok' if okg else 'DIFFERS'} ({e:.3g})"
                if not okg:
                    problems.append(f"{bd}: {gn}_{N} differs by {e:.3g}")
        else:
            line += ", no gradients"
        print(line + f", used: {how}")
    return problems


def main():
    ap = argparse.ArgumentParser(description="Check capture folders against PyTorch on the CPU.")
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--exact", action="store_true", help="bit for bit (same backend and dtype as the capture)")
    ap.add_argument("--tol", type=float, default=2e-2, help="relative to the largest magnitude (default 2e-2)")
    ap.add_argument("--backend", default="math", choices=("math", "flash"))
    a = ap.parse_args()
    bad = []
    for r in a.runs:
        if not os.path.isfile(os.path.join(r, "capture.json")):
            print(f"verify_capture.py: {r}: no capture.json", file=sys.stderr)
            return 2
        bad += verify(r, a.exact, a.tol, a.backend)
    for p in bad:
        print("PROBLEM:", p)
    print("verify: " + ("consistent" if not bad else f"{len(bad)} problems"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
