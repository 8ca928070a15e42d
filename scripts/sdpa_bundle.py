#!/usr/bin/env python3
"""sdpa_bundle.py: run PyTorch's scaled_dot_product_attention with each available backend
and the eager formula on the same inputs, and write bundles `flashdrift check` reads
(docs/import.md).

Per configuration (batch, heads, seqlen, head_dim, dtype, causal, dropout p) it writes a
directory bundle: meta.json and q, k, v, out_NAME (+ lse_NAME, dmask_NAME) .npy files,
layout "bhsd" (SDPA's own), bf16 as '<u2' with meta dtype bf16.

  p == 0: out_flash + lse_flash (aten._scaled_dot_product_flash_attention, the kernel
          SDPA's flash backend calls), out_efficient + lse_efficient, out_cudnn (SDPA with
          the cuDNN backend, where PyTorch has it; no LSE), out_math (SDPA with
          the math backend), out_eager (+ lse_eager): QK^T in the dtype, softmax in fp32,
          P cast to the dtype, PV in the dtype, as frameworks run attention eagerly.
  p > 0:  out_flash, lse_flash and dmask_flash from the flash op with
          return_debug_mask=True (dropped entries of the debug matrix are negative: the
          sign is the mask) plus the Philox seed and offset it returns; out_eager_fmask:
          the eager formula with the flash kernel's own mask (other backends draw other
          random numbers, so their outputs are not comparable and are not written).

With --backward it also draws an output gradient dO (torch.randn on the GPU, seeded
from the input seed, in the dtype), writes it as do.npy, and for every output it wrote
the autograd gradients of that very forward call, torch.autograd.grad(out, (q, k, v), dO),
as dq_NAME, dk_NAME, dv_NAME (the dtype, bhsd), plus meta "deterministic"
(torch.are_deterministic_algorithms_enabled()). A backend whose backward fails keeps its
output, loses its gradients, and says why in info.notes.

Inputs are generated (torch.randn on the GPU from --seed) or loaded (--load DIR: a
bundle's q.npy, k.npy, v.npy in bhsd). Needs torch and numpy.

  python3 scripts/sdpa_bundle.py --out bundles                       # the default shapes
  python3 scripts/sdpa_bundle.py --out b --seqlens 113 --head-dims 64 --dtypes fp16 --dropout 0.1
  python3 scripts/sdpa_bundle.py --out g --backward                  # with dO and the gradients
  python3 scripts/sdpa_bundle.py --out f --features window,alibi,softcap,all   # score modifiers
  build/flashdrift check --tensors bundles --out out/sdpa

With --features SET,... it writes, per set (window, window2, alibi, softcap, all: see
MOD_SETS) and shape, a bundle with the modifiers in meta (window, softcap, alibi_slopes)
and out_flex (FlexAttention: score_mod for softcap and ALiBi, block_mask for the window
and the causal mask, compiled on the GPU; role flash, with its LSE), out_efficient_bias
and out_math_bias (SDPA's efficient and math backends with a float attn_mask holding the
ALiBi bias and -inf outside the window: what Hugging Face's ALiBi models pass; not for
softcap) and out_eager (the model-code formula; role standard). Causal is bottom-right.
"""
import argparse
import json
import math
import os
import sys
import tarfile
import traceback

import numpy as np
import torch
import torch.nn.functional as F

MASK64 = (1 << 64) - 1
# dO's generator seed: the input seed plus this, so that dO differs from q, k, v.
DOUT_SEED_DELTA = 0x5EED_D0


def npy_save(path, arr):
    np.save(path, np.ascontiguousarray(arr), allow_pickle=False)


def to_np(t):
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    if t.dtype == torch.bool:
        return t.numpy().astype(np.uint8)
    return t.numpy()


def as_u64(t):
    t = t.detach().cpu().reshape(-1)
    try:
        return int(t[0].item()) & MASK64
    except (RuntimeError, TypeError):
        return int(t.view(torch.int64)[0].item()) & MASK64


def seed_offset(res):
    """(seed, offset) from the flash op's results: older PyTorch returns philox_seed and
    philox_offset tensors at 6 and 7, newer a two-element rng_state at 6."""
    r6, r7 = res[6], res[7]
    if r6.numel() >= 2:
        flat = r6.detach().cpu().reshape(-1)
        try:
            return int(flat[0].item()) & MASK64, int(flat[1].item()) & MASK64
        except (RuntimeError, TypeError):
            f64 = flat.view(torch.int64)
            return int(f64[0].item()) & MASK64, int(f64[1].item()) & MASK64
    return as_u64(r6), as_u64(r7)


def draw_qkv(shape, dtype, dev, seed):
    """q, k, v: torch.randn in fp32 on dev from one generator seeded with seed, in that
    order, rounded to dtype."""
    g = torch.Generator(device=dev)
    g.manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g, device=dev, dtype=torch.float32).to(dtype) for _ in range(3))


def autograd_leaves(q, k, v, seed, dev):
    """q, k, v as autograd leaves (every forward records its graph back to them) and dO:
    torch.randn from seed + DOUT_SEED_DELTA, in q's dtype."""
    q, k, v = (x.detach().requires_grad_(True) for x in (q, k, v))
    gd = torch.Generator(device=dev)
    gd.manual_seed(seed + DOUT_SEED_DELTA)
    return q, k, v, torch.randn(q.shape, generator=gd, device=dev, dtype=torch.float32).to(q.dtype)


def eager(q, k, v, scale, causal, keep=None, p=0.0):
    """bhsd inputs; returns (out, lse): QK^T in the dtype, softmax in fp32, P in the dtype."""
    s = torch.matmul(q, k.transpose(-2, -1)) * scale
    if causal:
        sq, sk = s.shape[-2], s.shape[-1]
        m = torch.ones(sq, sk, dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~m, float("-inf"))
    sf = s.float()
    lse = torch.logsumexp(sf, dim=-1)
    pr = torch.softmax(sf, dim=-1).to(q.dtype)
    if keep is not None:
        pr = pr.masked_fill(~keep, 0) * (1.0 / (1.0 - p))
    return torch.matmul(pr, v), lse


def one(args, B, H, S, D, dt, causal, p, gen_seed, outdir):
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dt]
    name = f"b{B}_h{H}_s{S}_d{D}_{dt}_{'causal' if causal else 'full'}_p{p:g}"
    path = os.path.join(outdir, name)
    os.makedirs(path, exist_ok=True)
    dev = "cuda"
    if args.load:
        ld = lambda n: torch.from_numpy(np.load(os.path.join(args.load, n + ".npy")))
        q, k, v = (ld(n).to(dev) for n in "qkv")
        if q.dtype == torch.int16 or str(q.dtype) == "torch.uint16":
            q, k, v = (x.view(torch.bfloat16) for x in (q, k, v))
    else:
        q, k, v = draw_qkv((B, H, S, D), dtype, dev, gen_seed)
    dout = None
    if args.backward:
        q, k, v, dout = autograd_leaves(q, k, v, gen_seed, dev)
    scale = 1.0 / math.sqrt(D)
    scale_f32 = float(np.float32(scale))
    outs, info = {}, {"torch": torch.__version__, "cuda": torch.version.cuda,
                      "gpu": torch.cuda.get_device_name(), "input_seed": gen_seed, "notes": []}
    meta = {"format": "flashdrift-bundle-1", "layout": "bhsd", "mask": "causal" if causal else "none",
            "dtype": dt, "scale": scale_f32, "dropout_p": p}
    # The flash kernel, called as SDPA's flash backend calls it.
    try:
        res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, p, causal, p > 0, scale=scale)
        o, lse = res[0], res[1]
        outs["flash"] = (o, lse[:, :, :S].float())
        if p > 0:
            seed, offset = seed_offset(res)
            meta["seed"], meta["offset"] = str(seed), str(offset)
            dm = res[8]
            info["debug_mask_shape"] = list(dm.shape)
            keep = ~torch.signbit(dm[:, :, :S, :S])
            outs["flash"] = outs["flash"] + (keep,)
            oe, _ = eager(q, k, v, scale, causal, keep, p)
            outs["eager_fmask"] = (oe, None)
        else:
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
                o2 = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
            info["flash_op_equals_sdpa_flash"] = bool(torch.equal(o, o2))
    except Exception as e:  # noqa: BLE001 - report and go on with the other backends
        info["notes"].append(f"flash unavailable: {type(e).__name__}: {e}")
    if p == 0:
        try:
            r = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, causal, scale=scale)
            outs["efficient"] = (r[0], r[1][:, :, :S].float())
        except Exception as e:  # noqa: BLE001
            info["notes"].append(f"efficient unavailable: {type(e).__name__}: {e}")
        try:
            # cuDNN's fused attention (SDPA's cuDNN backend; no LSE through this API)
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
                outs["cudnn"] = (F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale), None)
        except Exception as e:  # noqa: BLE001
            info["notes"].append(f"cudnn unavailable: {type(e).__name__}: {e}")
        try:
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
                outs["math"] = (F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale), None)
        except Exception as e:  # noqa: BLE001
            info["notes"].append(f"math unavailable: {type(e).__name__}: {e}")
        oe, le = eager(q, k, v, scale, causal)
        outs["eager"] = (oe, le)
    grads = {}
    if args.backward:
        meta["deterministic"] = bool(torch.are_deterministic_algorithms_enabled())
        info["dout_seed"] = gen_seed + DOUT_SEED_DELTA
        for n, tup in outs.items():
            try:
                grads[n] = torch.autograd.grad(tup[0], (q, k, v), grad_outputs=dout)
            except Exception as e:  # noqa: BLE001 - the output stays, without gradients
                info["notes"].append(f"{n} backward unavailable: {type(e).__name__}: {e}")
    meta["info"] = info
    if not outs:
        print(f"{name}: no output from any backend: {info['notes']}", flush=True)
        return None
    meta["roles"] = {n: ("standard" if n.startswith(("math", "eager")) else "flash") for n in outs}
    for n, t in (("q", q), ("k", k), ("v", v)):
        npy_save(os.path.join(path, n + ".npy"), to_np(t))
    for n, tup in outs.items():
        npy_save(os.path.join(path, f"out_{n}.npy"), to_np(tup[0]))
        if len(tup) > 1 and tup[1] is not None:
            npy_save(os.path.join(path, f"lse_{n}.npy"), to_np(tup[1]))
        if len(tup) > 2:
            npy_save(os.path.join(path, f"dmask_{n}.npy"), to_np(tup[2]))
        if n in grads:
            for gn, gt in zip(("dq", "dk", "dv"), grads[n]):
                npy_save(os.path.join(path, f"{gn}_{n}.npy"), to_np(gt))
    if dout is not None:
        npy_save(os.path.join(path, "do.npy"), to_np(dout))
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return path


# --- FlashAttention-2's score modifiers, as PyTorch users run them ---------------------
# FlexAttention (torch.nn.attention.flex_attention) calls score_mod on the scaled score
# s = (q . k) * scale, then masks with block_mask's mask_mod: that is FlashAttention-2's
# order (softcap and ALiBi after the scale, the window as a mask). The eager formula with
# the same modifiers is what model code writes (Gemma 2's softcap, an ALiBi bias tensor),
# and SDPA with a float attn_mask (ALiBi bias + window as -inf) is what Hugging Face's
# ALiBi models hand to SDPA (its efficient and math backends).
MOD_SETS = {
    "window": {"window": (48, 0)},
    "window2": {"window": (32, 16)},
    "alibi": {"alibi": True},
    "softcap": {"softcap": 2.0},
    "all": {"window": (64, 8), "alibi": True, "softcap": 5.0},
}


def alibi_default_slopes(heads):
    """2^(-8 (h + 1) / heads) in fp32, as harness/fd_problem's default slopes."""
    return [float(np.float32(2.0 ** (-8.0 * (h + 1) / heads))) for h in range(heads)]


def mod_bias(mods, heads, sq, sk, causal, dev):
    """(heads, sq, sk) fp32 additive bias: ALiBi -slope * |i + sk - sq - j| and -inf
    where the window or the causal mask (bottom-right) hides the key; None when neither."""
    i = torch.arange(sq, device=dev).view(sq, 1)
    j = torch.arange(sk, device=dev).view(1, sk)
    diag = i + (sk - sq)
    vis = torch.ones(sq, sk, dtype=torch.bool, device=dev)
    if causal:
        vis &= j <= diag
    if "window" in mods:
        wl, wr = mods["window"]
        if wl >= 0:
            vis &= j >= diag - wl
        if wr >= 0:
            vis &= j <= diag + wr
    bias = torch.zeros(heads, sq, sk, dtype=torch.float32, device=dev)
    if mods.get("alibi"):
        sl = torch.tensor(alibi_default_slopes(heads), dtype=torch.float32, device=dev).view(heads, 1, 1)
        bias = bias - sl * (diag - j).abs().float()
    return bias.masked_fill(~vis, float("-inf")), vis


def eager_mods(q, k, v, scale, mods, bias):
    """Model code: scores in the dtype, softcap in the dtype, bias added in fp32,
    softmax in fp32, P in the dtype."""
    s = torch.matmul(q, k.transpose(-2, -1)) * scale
    if mods.get("softcap"):
        c = mods["softcap"]
        s = torch.tanh(s / c) * c
    sf = s.float() + bias
    lse = torch.logsumexp(sf, dim=-1)
    return torch.matmul(torch.softmax(sf, dim=-1).to(q.dtype), v), lse


def flex_call(q, k, v, scale, mods, causal, dev, compiled):
    from torch.nn.attention import flex_attention as fa
    heads, sq, sk = q.shape[1], q.shape[2], k.shape[2]
    slopes = torch.tensor(alibi_default_slopes(heads), dtype=torch.float32, device=dev)
    cap = mods.get("softcap", 0.0)
    # a tensor, not a Python float: torch.compile turns a captured float into a symbol
    # that flex_attention's score_mod cannot take
    cap_t = torch.tensor(cap, dtype=torch.float32, device=dev)
    use_alibi = bool(mods.get("alibi"))

    def score_mod(score, b, h, qi, kj):
        if cap:
            score = torch.tanh(score / cap_t) * cap_t
        if use_alibi:
            score = score - slopes[h] * (qi + (sk - sq) - kj).abs()
        return score

    wl, wr = mods.get("window", (-1, -1))

    def mask_mod(b, h, qi, kj):
        diag = qi + (sk - sq)
        ok = kj >= 0
        if causal:
            ok = ok & (kj <= diag)
        if wl >= 0:
            ok = ok & (kj >= diag - wl)
        if wr >= 0:
            ok = ok & (kj <= diag + wr)
        return ok

    bm = fa.create_block_mask(mask_mod, None, None, sq, sk, device=dev)
    if compiled:
        # Every feature set and shape is a new guard for dynamo; past its recompile limit
        # (8 by default) flex_attention silently falls back to the unfused eager code, and
        # the bundle would judge that instead of the fused kernel. Raise the limit and make
        # hitting it an error, so that out_flex is always the compiled kernel or absent.
        dc = torch._dynamo.config
        for knob in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                     "accumulated_cache_size_limit"):
            if hasattr(dc, knob):
                setattr(dc, knob, max(getattr(dc, knob), 4096))
        if hasattr(dc, "fail_on_recompile_limit_hit"):
            dc.fail_on_recompile_limit_hit = True
    fn = torch.compile(fa.flex_attention) if compiled else fa.flex_attention
    kw = {"score_mod": score_mod, "block_mask": bm, "scale": scale}
    try:
        o, lse = fn(q, k, v, return_aux=fa.AuxRequest(lse=True), **kw)
        lse = lse.lse if hasattr(lse, "lse") else lse
    except (AttributeError, TypeError):
        o, lse = fn(q, k, v, return_lse=True, **kw)
    return o, lse.float()


def one_mods(args, B, H, S, D, dt, causal, modname, gen_seed, outdir):
    """One bundle with FlashAttention-2's score modifiers: out_flex (FlexAttention, role
    flash), out_efficient_bias (SDPA's efficient backend with a float mask; no softcap),
    out_math_bias, out_eager (role standard)."""
    mods = MOD_SETS[modname]
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dt]
    name = f"b{B}_h{H}_s{S}_d{D}_{dt}_{'causal' if causal else 'full'}_{modname}"
    path = os.path.join(outdir, name)
    os.makedirs(path, exist_ok=True)
    dev = args.device
    q, k, v = draw_qkv((B, H, S, D), dtype, dev, gen_seed)
    dout = None
    if args.backward:
        q, k, v, dout = autograd_leaves(q, k, v, gen_seed, dev)
    scale = float(np.float32(1.0 / math.sqrt(D)))
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "input_seed": gen_seed,
            "gpu": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "notes": [],
            "mods": modname}
    meta = {"format": "flashdrift-bundle-1", "layout": "bhsd", "mask": "causal_br" if causal else "none",
            "dtype": dt, "scale": scale, "dropout_p": 0.0}
    if "window" in mods:
        meta["window"] = list(mods["window"])
    if mods.get("softcap"):
        meta["softcap"] = mods["softcap"]
    if mods.get("alibi"):
        meta["alibi_slopes"] = alibi_default_slopes(H)
    bias, _ = mod_bias(mods, H, S, S, causal, dev)
    outs = {}
    try:
        outs["flex"] = flex_call(q, k, v, scale, mods, causal, dev, compiled=(dev == "cuda"))
        info["flex"] = "compiled" if dev == "cuda" else "unfused"
    except Exception as e:  # noqa: BLE001 - report and go on
        info["notes"].append(f"flex unavailable: {type(e).__name__}: {e}")
    if not mods.get("softcap"):
        mask = bias.to(dtype).unsqueeze(0).expand(B, H, S, S)
        for n, be in (("efficient_bias", "EFFICIENT_ATTENTION"), ("math_bias", "MATH")):
            try:
                with torch.nn.attention.sdpa_kernel(getattr(torch.nn.attention.SDPBackend, be)):
                    outs[n] = (F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale), None)
            except Exception as e:  # noqa: BLE001
                info["notes"].append(f"{n} unavailable: {type(e).__name__}: {e}")
        info["bias_dtype"] = dt
    outs["eager"] = eager_mods(q, k, v, scale, mods, bias.unsqueeze(0))
    grads = {}
    if args.backward:
        meta["deterministic"] = bool(torch.are_deterministic_algorithms_enabled())
        info["dout_seed"] = gen_seed + DOUT_SEED_DELTA
        for n, tup in outs.items():
            try:
                grads[n] = torch.autograd.grad(tup[0], (q, k, v), grad_outputs=dout)
            except Exception as e:  # noqa: BLE001
                info["notes"].append(f"{n} backward unavailable: {type(e).__name__}: {e}")
    meta["info"] = info
    meta["roles"] = {n: ("standard" if n.startswith(("math", "eager")) else "flash") for n in outs}
    for n, t in (("q", q), ("k", k), ("v", v)):
        npy_save(os.path.join(path, n + ".npy"), to_np(t))
    for n, (o, lse) in outs.items():
        npy_save(os.path.join(path, f"out_{n}.npy"), to_np(o))
        if lse is not None:
            npy_save(os.path.join(path, f"lse_{n}.npy"), to_np(lse))
        if n in grads:
            for gn, gt in zip(("dq", "dk", "dv"), grads[n]):
                npy_save(os.path.join(path, f"{gn}_{n}.npy"), to_np(gt))
    if dout is not None:
        npy_save(os.path.join(path, "do.npy"), to_np(dout))
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return path


def one_varlen(args, H, D, dt, causal, lens, gen_seed, outdir):
    """One packed variable-length batch (FlashAttention's flash_attn_varlen_func layout):
    out_njt_NAME from SDPA on nested jagged tensors (torch.nested, layout=torch.jagged)
    under each SDPA backend that takes them (role flash, except math: standard), out_eager
    (each sequence alone, the model-code formula; standard), and out_eager_padded (the
    batch zero-padded to its longest sequence, pad keys masked with -inf in a float mask,
    the valid rows taken back; standard): what transformers users compare."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dt]
    dev = args.device
    total = sum(lens)
    name = f"varlen{len(lens)}_h{H}_t{total}_d{D}_{dt}_{'causal' if causal else 'full'}"
    path = os.path.join(outdir, name)
    os.makedirs(path, exist_ok=True)
    q, k, v = draw_qkv((total, H, D), dtype, dev, gen_seed)
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    offsets = torch.tensor(cu, dtype=torch.int64, device=dev)
    scale = float(np.float32(1.0 / math.sqrt(D)))
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "input_seed": gen_seed,
            "gpu": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "notes": [], "seqlens": lens}
    outs = {}
    # SDPA on nested jagged tensors: (B, j, H, D) -> (B, H, j, D) for the call
    nj = [torch.nested.nested_tensor_from_jagged(t, offsets).transpose(1, 2) for t in (q, k, v)]
    backends = (("flash", "FLASH_ATTENTION"), ("efficient", "EFFICIENT_ATTENTION"), ("math", "MATH"))
    for n, be in backends:
        try:
            with torch.nn.attention.sdpa_kernel(getattr(torch.nn.attention.SDPBackend, be)):
                o = F.scaled_dot_product_attention(*nj, is_causal=causal, scale=scale)
            outs["njt_" + n] = o.transpose(1, 2).values()  # (total, H, D), packed
        except Exception as e:  # noqa: BLE001 - a backend that refuses jagged inputs is noted
            info["notes"].append(f"njt_{n} unavailable: {type(e).__name__}: {str(e)[:200]}")
    # eager, each sequence alone
    eo = torch.empty_like(q)
    lse = torch.empty(H, total, dtype=torch.float32, device=dev)
    for s in range(len(lens)):
        a, z = cu[s], cu[s + 1]
        if z == a:
            continue
        qs, ks, vs = (t[a:z].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        o, l = eager(qs, ks, vs, scale, causal)
        eo[a:z] = o[0].transpose(0, 1)
        lse[:, a:z] = l[0]
    outs["eager"] = eo
    # eager over the zero-padded batch, the pad keys masked (-inf in a float mask)
    L = max(lens)
    pad = lambda t: torch.stack([torch.nn.functional.pad(t[cu[s]:cu[s + 1]], (0, 0, 0, 0, 0, L - lens[s]))
                                 for s in range(len(lens))]).transpose(1, 2)  # (B, H, L, D)
    qp, kp, vp = pad(q), pad(k), pad(v)
    keymask = torch.tensor([[j < n for j in range(L)] for n in lens], device=dev)
    sc = torch.matmul(qp, kp.transpose(-2, -1)) * scale
    bias = torch.zeros(len(lens), 1, L, L, device=dev, dtype=torch.float32)
    bias = bias.masked_fill(~keymask[:, None, None, :], float("-inf"))
    if causal:
        bias = bias.masked_fill(torch.ones(L, L, dtype=torch.bool, device=dev).triu(1), float("-inf"))
    pr = torch.softmax(sc.float() + bias, dim=-1).nan_to_num(0.0).to(dtype)
    op = torch.matmul(pr, vp).transpose(1, 2)  # (B, L, H, D)
    outs["eager_padded"] = torch.cat([op[s, :lens[s]] for s in range(len(lens))])
    meta = {"format": "flashdrift-bundle-1", "layout": "bshd", "mask": "causal_br" if causal else "none",
            "dtype": dt, "scale": scale, "dropout_p": 0.0, "info": info,
            "roles": {n: ("flash" if n in ("njt_flash", "njt_efficient") else "standard") for n in outs}}
    for n, t in (("q", q), ("k", k), ("v", v)):
        npy_save(os.path.join(path, n + ".npy"), to_np(t.unsqueeze(0)))
    for n, o in outs.items():
        npy_save(os.path.join(path, f"out_{n}.npy"), to_np(o.unsqueeze(0)))
    npy_save(os.path.join(path, "lse_eager.npy"), to_np(lse.unsqueeze(0)))
    for n in ("cu_seqlens_q", "cu_seqlens_k"):
        np.save(os.path.join(path, n + ".npy"), np.array(cu, dtype=np.int32))
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return path


def pack(dirs, dest, limit):
    """Bundles into dest/bundles_N.tar.xz, each about `limit` bytes after compression
    (estimated: random fp16/bf16 data shrinks little, 0/1 dropout masks about 8x)."""
    groups, cur, size = [], [], 0
    for d in dirs:
        n = sum(os.path.getsize(os.path.join(d, f)) * (0.15 if f.startswith("dmask_") else 0.95)
                for f in os.listdir(d))
        if cur and size + n > limit:
            groups.append(cur)
            cur, size = [], 0
        cur.append(d)
        size += n
    if cur:
        groups.append(cur)
    for i, g in enumerate(groups):
        with tarfile.open(os.path.join(dest, f"bundles_{i}.tar.xz"), "w:xz", preset=3) as tf:
            for d in g:
                tf.add(d, arcname=os.path.basename(d))
    return len(groups)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seqlens", default="113,1023")
    ap.add_argument("--head-dims", default="64,128")
    ap.add_argument("--dtypes", default="fp16,bf16")
    ap.add_argument("--causal", default="0,1")
    ap.add_argument("--dropout", default="0,0.1")
    ap.add_argument("--seed", type=int, default=0, help="input seed (torch.Generator on the GPU)")
    ap.add_argument("--large-batch", type=int, default=0,
                    help="batch for seqlens >= 512 (0: --batch); keeps the bundles small enough to ship")
    ap.add_argument("--load", help="read q, k, v (bhsd .npy) from this bundle instead of generating them")
    ap.add_argument("--pack", type=int, default=0, help="also tar.xz the bundles, at most N raw bytes per archive")
    ap.add_argument("--pack-dir", help="where the archives go (default: --out)")
    ap.add_argument("--backward", action="store_true",
                    help="also draw dO (do.npy) and write each output's autograd gradients dq/dk/dv_NAME")
    ap.add_argument("--features", default="",
                    help="comma list of " + ",".join(MOD_SETS) + ": bundles with FlashAttention-2's score "
                    "modifiers from FlexAttention, SDPA with a float mask and eager code (no dropout)")
    ap.add_argument("--varlen", default="",
                    help="comma list of sequence lengths: packed variable-length bundles (SDPA on nested "
                    "jagged tensors, eager per sequence, eager over the padded batch), per head dim, dtype, mask")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu: only with --features (FlexAttention unfused, for trying the script without a GPU)")
    a = ap.parse_args()
    for m in filter(None, a.features.split(",")):
        if m not in MOD_SETS:
            sys.exit(f"sdpa_bundle.py: --features: unknown set {m!r} (expected {', '.join(MOD_SETS)})")
    if a.device == "cpu" and not (a.features or a.varlen):
        sys.exit("sdpa_bundle.py: --device cpu works with --features or --varlen only")
    try:
        lens = [int(x) for x in a.varlen.split(",")] if a.varlen else []
    except ValueError:
        sys.exit(f"sdpa_bundle.py: --varlen: expected comma-separated sequence lengths, got {a.varlen!r}")
    if any(x < 1 for x in lens) or len(lens) > 64:
        sys.exit("sdpa_bundle.py: --varlen: 1 to 64 lengths, each at least 1")
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("sdpa_bundle.py: no CUDA device")
    where = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    print(f"torch {torch.__version__} cuda {torch.version.cuda} on {where}", flush=True)
    os.makedirs(a.out, exist_ok=True)
    made, n = [], 0
    if lens:
        for D in map(int, a.head_dims.split(",")):
            for dt in a.dtypes.split(","):
                for c in map(int, a.causal.split(",")):
                    try:
                        d = one_varlen(a, a.heads, D, dt, bool(c), lens, a.seed + n, a.out)
                    except Exception:  # noqa: BLE001
                        traceback.print_exc()
                        d = None
                    n += 1
                    if d:
                        made.append(d)
                        print("wrote", d, flush=True)
        if not a.features:
            return
    if a.features:
        for S in map(int, a.seqlens.split(",")):
            for D in map(int, a.head_dims.split(",")):
                for dt in a.dtypes.split(","):
                    for c in map(int, a.causal.split(",")):
                        for m in filter(None, a.features.split(",")):
                            try:
                                d = one_mods(a, a.batch, a.heads, S, D, dt, bool(c), m, a.seed + n, a.out)
                            except Exception:  # noqa: BLE001
                                traceback.print_exc()
                                d = None
                            n += 1
                            if d:
                                made.append(d)
                                print("wrote", d, flush=True)
        if a.pack:
            k = pack(made, a.pack_dir or a.out, a.pack)
            print(f"packed {len(made)} bundles into {k} archives", flush=True)
        return
    for S in map(int, a.seqlens.split(",")):
        for D in map(int, a.head_dims.split(",")):
            for dt in a.dtypes.split(","):
                for c in map(int, a.causal.split(",")):
                    for p in map(float, a.dropout.split(",")):
                        B = a.large_batch if (a.large_batch and S >= 512) else a.batch
                        try:
                            d = one(a, B, a.heads, S, D, dt, bool(c), p, a.seed + n, a.out)
                        except Exception:  # noqa: BLE001 - one failing configuration stops no other
                            traceback.print_exc()
                            d = None
                        n += 1
                        if d:
                            made.append(d)
                            print("wrote", d, flush=True)
    if a.pack:
        k = pack(made, a.pack_dir or a.out, a.pack)
        print(f"packed {len(made)} bundles into {k} archives", flush=True)


if __name__ == "__main__":
    main()
