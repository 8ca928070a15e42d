#!/usr/bin/env python3
"""vit_loss_mismatch.py: a small ViT encoder-decoder trained for a few steps, with
attention computed one of five ways, to produce the loss mismatch that
`flashdrift compare` explains (docs/loss-mismatch.md).

The model (ViTEncDec): 16x16 RGB images cut into 4x4 patches (16 patches + a cls token =
17 tokens), width 64, 4 heads of dim 16, 2 pre-LN encoder blocks (self-attention) and 2
decoder blocks (causal self-attention over 9 tokens, then cross-attention to the
encoder's 17): 6 attention calls per step. Trained with AdamW on synthetic, seeded data
(the decoder predicts tokens derived from the image's patch means); cross-entropy loss.
On CUDA the step runs under bf16 autocast; on the CPU in fp32 (or bf16 autocast with
--dtype bf16). The same --seed gives the same initial parameters and data in every
scenario.

--attn (the scenario; it is also the capture's label):
  eager              attention written out in `attend` (QK^T, softmax in fp32, P cast back,
                     PV), registered with the capture (role standard, output name eager)
  sdpa               F.scaled_dot_product_attention, PyTorch's default backend choice
                     (role flash, output name sdpa)
  flash              SDPA under sdpa_kernel(SDPBackend.FLASH_ATTENTION) (on the CPU too:
                     PyTorch's CPU flash kernel) (role flash, output name flash)
  flash-reshape-bug  as flash, but the (b, h, s, d) output is reshaped to (b, s, h*d)
                     without the transpose(1, 2) before the output projection
  flash-postln       as flash, but post-LN blocks: x = LN(x + attn(x)) instead of
                     x = x + attn(LN(x))

  --capture DIR      capture the FIRST step (identical parameters in every scenario) into
                     DIR (scripts/flashdrift_capture.py), with info.losses = every step's
                     loss, info.overhead_s = (forward + backward with capture and writing)
                     - (without), medians of three timed steps each on copies of the model
                     after a warm-up (step_s, step_capture_s), seed, config
  --seeds A-B        run seeds A..B one after the other (capturing into DIR-sK)
  --check-observe    run the first step three times from the same state: twice without
                     capture (is the step deterministic?) and once with; report whether
                     the loss and every parameter gradient are bitwise identical with and
                     without capture (exit 1 if not)
  --tiny             batch 2, 8x8 images (4 patches + cls = 5 tokens), width 16, 2 heads of
                     dim 8, 1 encoder and 1 decoder block (3 attention calls), 3 decoder
                     tokens: the committed test captures (tests/data/capture-tiny)

  python3 scripts/examples/vit_loss_mismatch.py --device cpu --attn sdpa --capture /tmp/cap/sdpa
  python3 scripts/examples/vit_loss_mismatch.py --device cpu --attn eager --check-observe
"""
import argparse
import contextlib
import copy
import math
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import flashdrift_capture  # noqa: E402

SCENARIOS = {  # name -> (role, output name, sdpa backend, reshape bug, post-LN)
    "eager": ("standard", "eager", None, False, False),
    "sdpa": ("flash", "sdpa", "default", False, False),
    "flash": ("flash", "flash", "flash", False, False),
    "flash-reshape-bug": ("flash", "flash", "flash", True, False),
    "flash-postln": ("flash", "flash", "flash", False, True),
}
FULL = dict(batch=4, image=16, patch=4, width=64, heads=4, enc=2, dec=2, dec_len=9, vocab=32, mlp=4)
TINY = dict(batch=2, image=8, patch=4, width=16, heads=2, enc=1, dec=1, dec_len=3, vocab=8, mlp=2)


def attend(q, k, v, causal, scale, dropout_p=0.0):
    """Eager attention, (b, h, s, d): QK^T in the inputs' dtype, softmax in fp32, P cast
    to v's dtype, PV. Causal is top-left (key j visible from query i when j <= i)."""
    s = torch.matmul(q, k.transpose(-2, -1)).float() * scale
    if causal:
        sq, sk = s.shape[-2], s.shape[-1]
        keep = torch.ones(sq, sk, dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    p = torch.softmax(s, dim=-1)
    if dropout_p > 0:
        p = F.dropout(p, dropout_p)
    return torch.matmul(p.to(v.dtype), v)


class Attention(nn.Module):
    def __init__(self, width, heads, causal, cfg):
        super().__init__()
        self.h, self.d, self.causal, self.cfg = heads, width // heads, causal, cfg
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x, mem=None):
        b, s, _ = x.shape
        src = x if mem is None else mem
        sk = src.shape[1]
        q = self.q(x).view(b, s, self.h, self.d).transpose(1, 2)
        k, v = self.kv(src).view(b, sk, 2, self.h, self.d).permute(2, 0, 3, 1, 4).unbind(0)
        scale = 1.0 / math.sqrt(self.d)
        p = self.cfg["attn_dropout"] if self.training else 0.0
        backend = self.cfg["backend"]
        if backend is None:
            o = attend(q, k, v, self.causal, scale, p)
        elif backend == "flash":
            from torch.nn.attention import SDPBackend, sdpa_kernel
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                o = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        else:
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        if self.cfg["reshape_bug"]:
            o = o.reshape(b, s, self.h * self.d)          # the bug: heads and tokens mixed
        else:
            o = o.transpose(1, 2).reshape(b, s, self.h * self.d)
        return self.proj(o)


class MLP(nn.Module):
    def __init__(self, width, ratio):
        super().__init__()
        self.fc1 = nn.Linear(width, ratio * width)
        self.fc2 = nn.Linear(ratio * width, width)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class EncBlock(nn.Module):
    def __init__(self, c, cfg):
        super().__init__()
        self.postln = cfg["postln"]
        self.ln1, self.ln2 = nn.LayerNorm(c["width"]), nn.LayerNorm(c["width"])
        self.attn = Attention(c["width"], c["heads"], False, cfg)
        self.mlp = MLP(c["width"], c["mlp"])

    def forward(self, x):
        if self.postln:
            x = self.ln1(x + self.attn(x))
            return self.ln2(x + self.mlp(x))
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class DecBlock(nn.Module):
    def __init__(self, c, cfg):
        super().__init__()
        self.postln = cfg["postln"]
        self.ln1, self.ln2, self.ln3 = (nn.LayerNorm(c["width"]) for _ in range(3))
        self.attn = Attention(c["width"], c["heads"], True, cfg)
        self.xattn = Attention(c["width"], c["heads"], False, cfg)
        self.mlp = MLP(c["width"], c["mlp"])

    def forward(self, x, mem):
        if self.postln:
            x = self.ln1(x + self.attn(x))
            x = self.ln2(x + self.xattn(x, mem))
            return self.ln3(x + self.mlp(x))
        x = x + self.attn(self.ln1(x))
        x = x + self.xattn(self.ln2(x), mem)
        return x + self.mlp(self.ln3(x))


class Encoder(nn.Module):
    def __init__(self, c, cfg):
        super().__init__()
        n = (c["image"] // c["patch"]) ** 2
        self.patch = nn.Linear(3 * c["patch"] ** 2, c["width"])
        self.cls = nn.Parameter(torch.randn(1, 1, c["width"]) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, n + 1, c["width"]) * 0.02)
        self.blocks = nn.ModuleList(EncBlock(c, cfg) for _ in range(c["enc"]))
        self.norm = nn.LayerNorm(c["width"])
        self.p = c["patch"]

    def forward(self, img):
        b, ch, hh, ww = img.shape
        p = self.p
        x = img.unfold(2, p, p).unfold(3, p, p)                  # b, c, H/p, W/p, p, p
        x = x.permute(0, 2, 3, 1, 4, 5).reshape(b, (hh // p) * (ww // p), ch * p * p)
        x = self.patch(x)
        x = torch.cat([self.cls.expand(b, -1, -1).to(x.dtype), x], dim=1) + self.pos.to(x.dtype)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class Decoder(nn.Module):
    def __init__(self, c, cfg):
        super().__init__()
        self.emb = nn.Embedding(c["vocab"], c["width"])
        self.pos = nn.Parameter(torch.randn(1, c["dec_len"], c["width"]) * 0.02)
        self.blocks = nn.ModuleList(DecBlock(c, cfg) for _ in range(c["dec"]))
        self.norm = nn.LayerNorm(c["width"])
        self.head = nn.Linear(c["width"], c["vocab"])

    def forward(self, tokens, mem):
        x = self.emb(tokens) + self.pos
        for blk in self.blocks:
            x = blk(x, mem)
        return self.head(self.norm(x))


class ViTEncDec(nn.Module):
    def __init__(self, c, cfg):
        super().__init__()
        self.encoder = Encoder(c, cfg)
        self.decoder = Decoder(c, cfg)

    def forward(self, img, tokens):
        return self.decoder(tokens, self.encoder(img))


def make_batches(c, seed, steps, device):
    """Seeded synthetic data: images and the tokens the decoder must predict (a BOS token
    0, then the bucketed means of the first patches)."""
    g = torch.Generator().manual_seed(seed * 1000003 + 7)
    out = []
    n = c["dec_len"]
    p = c["patch"]
    for _ in range(steps):
        img = torch.randn(c["batch"], 3, c["image"], c["image"], generator=g)
        m = img.mean(1).unfold(1, p, p).unfold(2, p, p).mean((-1, -2)).reshape(c["batch"], -1)
        tgt = (torch.sigmoid(m[:, :n] * 4) * (c["vocab"] - 1)).long().clamp(1, c["vocab"] - 1)
        tin = torch.cat([torch.zeros(c["batch"], 1, dtype=torch.long), tgt[:, :-1]], dim=1)
        out.append((img.to(device), tin.to(device), tgt.to(device)))
    return out


def build(c, scenario, seed, device, attn_dropout):
    role, name, backend, bug, postln = SCENARIOS[scenario]
    cfg = {"backend": backend, "reshape_bug": bug, "postln": postln, "attn_dropout": attn_dropout}
    torch.manual_seed(seed)
    model = ViTEncDec(c, cfg).to(device)
    return model


def autocast_ctx(device, dtype):
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step(model, batch, device, dtype, vocab, cap=None):
    """Forward and backward of one step (the optimizer is the caller's). Returns the loss."""
    img, tin, tgt = batch
    model.zero_grad(set_to_none=True)
    with (cap if cap is not None else contextlib.nullcontext()):
        with autocast_ctx(device, dtype):
            logits = model(img, tin)
        loss = F.cross_entropy(logits.float().reshape(-1, vocab), tgt.reshape(-1))
        loss.backward()
        if cap is not None:
            cap.finish(loss)
    return loss


def timed_step(model, batch, device, dtype, vocab, cap=None):
    sync(device)
    t0 = time.perf_counter()
    loss = step(model, batch, device, dtype, vocab, cap)
    sync(device)
    return loss, time.perf_counter() - t0


def new_capture(path, model, scenario, info, params, overwrite=False):
    role, name = SCENARIOS[scenario][:2]
    functions = [(sys.modules[__name__], "attend")] if scenario == "eager" else []
    return flashdrift_capture.Capture(path, model, label=scenario, output_name=name, role=role,
                                      functions=functions, params=params, info=info, overwrite=overwrite)


def grads_of(model):
    return {n: (p.grad.detach().clone() if p.grad is not None else None) for n, p in model.named_parameters()}


def bits_equal(a, b):
    if a is None or b is None:
        return a is None and b is None
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    ia = a.contiguous().view(torch.int32 if a.element_size() == 4 else torch.int16)
    ib = b.contiguous().view(torch.int32 if b.element_size() == 4 else torch.int16)
    return bool(torch.equal(ia, ib))


def check_observe(a, c, scenario, seed, device):
    model = build(c, scenario, seed, device, a.attn_dropout)
    batch = make_batches(c, seed, 1, device)[0]
    runs = []
    tmp = tempfile.mkdtemp(prefix="fd-observe-")
    try:
        for kind in ("plain", "plain", "capture"):
            m = copy.deepcopy(model)
            cap = None
            if kind == "capture":
                cap = new_capture(os.path.join(tmp, "run"), m, scenario, {"seed": seed}, params=True)
            loss = step(m, batch, device, a.dtype, c["vocab"], cap)
            runs.append((loss.detach().clone(), grads_of(m)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def same(r1, r2):
        bad = [n for n in r1[1] if not bits_equal(r1[1][n], r2[1][n])]
        return bits_equal(r1[0], r2[0]), bad

    det_loss, det_bad = same(runs[0], runs[1])
    obs_loss, obs_bad = same(runs[0], runs[2])
    n = len(runs[0][1])
    print(f"check-observe {scenario} seed {seed} on {device.type} ({a.dtype}), "
          f"deterministic algorithms {torch.are_deterministic_algorithms_enabled()}:")
    print(f"  without capture, twice: loss {'identical' if det_loss else 'DIFFERS'}, "
          f"{n - len(det_bad)}/{n} parameter gradients bitwise identical")
    print(f"  with vs without capture: loss {'identical' if obs_loss else 'DIFFERS'} "
          f"({runs[0][0].item():.9g} / {runs[2][0].item():.9g}), "
          f"{n - len(obs_bad)}/{n} parameter gradients bitwise identical")
    if obs_loss and not obs_bad:
        print("  observe check: PASS (the capture did not change the step's numbers)")
        return 0
    if not det_loss or det_bad:
        print("  observe check: INCONCLUSIVE (the step itself is not deterministic: "
              f"{', '.join(det_bad[:5]) or 'loss'} differ between two runs without capture)")
        return 1
    print(f"  observe check: FAIL (differing: {', '.join(obs_bad[:8]) or 'loss only'})")
    return 1


def train(a, c, scenario, seed, device, capture_dir):
    model = build(c, scenario, seed, device, a.attn_dropout)
    batches = make_batches(c, seed, a.steps, device)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    cap = None
    info = {"seed": seed, "scenario": scenario, "steps": a.steps, "config": c,
            "dtype": a.dtype + (" autocast" if a.dtype == "bf16" else ""),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    if capture_dir is not None:
        cap = new_capture(capture_dir, model, scenario, info, a.params, a.overwrite)
        # the overhead, on copies of the model: one warm-up, then three steps without and
        # three with capture (written to a temporary folder), alternating; medians
        plain, captured = [], []
        tmp = tempfile.mkdtemp(prefix="fd-overhead-")
        try:
            for i in range(4):
                _, t = timed_step(copy.deepcopy(model), batches[0], device, a.dtype, c["vocab"])
                if i:
                    plain.append(t)
                    m = copy.deepcopy(model)
                    tc = new_capture(os.path.join(tmp, f"r{i}"), m, scenario, {}, a.params)
                    captured.append(timed_step(m, batches[0], device, a.dtype, c["vocab"], tc)[1])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        t_plain, t_cap = sorted(plain)[1], sorted(captured)[1]
    losses = []
    for i, b in enumerate(batches):
        if i == 0 and cap is not None:
            loss = step(model, b, device, a.dtype, c["vocab"], cap)
        else:
            loss = step(model, b, device, a.dtype, c["vocab"])
        opt.step()
        losses.append(float(loss.item()))
    if cap is not None:
        cap.update_info(losses=losses, step_s=round(t_plain, 5), step_capture_s=round(t_cap, 5),
                        overhead_s=round(t_cap - t_plain, 5))
        calls = cap._index["calls"]
        print(f"{scenario} seed {seed}: captured step 0 into {capture_dir}: {len(calls)} calls, "
              f"{sum(1 for x in calls if x['bundle'])} bundles; step {t_plain:.4f} s, with capture "
              f"{t_cap:.4f} s (overhead {t_cap - t_plain:+.4f} s)")
    print(f"{scenario} seed {seed} losses: " + " ".join(f"{x:.6f}" for x in losses))
    return 0


def parse_seeds(s):
    lo, sep, hi = s.partition("-")
    try:
        lo = int(lo)
        hi = int(hi) if sep else lo
    except ValueError:
        raise ValueError(f"--seeds {s!r}: expected A-B (e.g. 1-20) or one seed") from None
    if lo < 0 or hi < lo:
        raise ValueError(f"--seeds {s!r}: expected 0 <= A <= B")
    return list(range(lo, hi + 1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attn", default="flash", choices=sorted(SCENARIOS), help="the scenario (default flash)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--dtype", default=None, choices=("bf16", "fp32"),
                    help="bf16 (autocast) or fp32 (default: bf16 on CUDA, fp32 on the CPU)")
    ap.add_argument("--steps", type=int, default=5, help="training steps (default 5)")
    ap.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    ap.add_argument("--seed", type=int, default=0, help="parameters and data seed (default 0)")
    ap.add_argument("--seeds", default=None, metavar="A-B", help="run these seeds instead of --seed")
    ap.add_argument("--capture", default=None, metavar="DIR", help="capture the first step into DIR (DIR-sK with --seeds)")
    ap.add_argument("--params", action="store_true", help="with --capture: also write params.safetensors")
    ap.add_argument("--overwrite", action="store_true", help="with --capture: replace a capture already there")
    ap.add_argument("--check-observe", action="store_true", help="check that capturing leaves the step bit for bit unchanged")
    ap.add_argument("--tiny", action="store_true", help="the tiny configuration of the committed test captures")
    ap.add_argument("--attn-dropout", type=float, default=0.0, help="attention dropout p (default 0; not capturable)")
    a = ap.parse_args(argv)
    prog = "vit_loss_mismatch.py"
    if a.steps < 1:
        print(f"{prog}: --steps {a.steps}: at least 1", file=sys.stderr)
        return 2
    if not 0.0 <= a.attn_dropout < 1.0:
        print(f"{prog}: --attn-dropout {a.attn_dropout}: expected 0 <= p < 1", file=sys.stderr)
        return 2
    try:
        seeds = parse_seeds(a.seeds) if a.seeds is not None else [a.seed]
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    dev = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev not in ("cuda", "cpu"):
        print(f"{prog}: --device {dev!r}: expected cuda or cpu", file=sys.stderr)
        return 2
    if dev == "cuda" and not torch.cuda.is_available():
        print(f"{prog}: --device cuda: this PyTorch sees no CUDA device (use --device cpu)", file=sys.stderr)
        return 2
    device = torch.device(dev)
    if a.dtype is None:
        a.dtype = "bf16" if dev == "cuda" else "fp32"
    c = dict(TINY if a.tiny else FULL)
    if a.check_observe:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    rc = 0
    try:
        for seed in seeds:
            if a.check_observe:
                rc = max(rc, check_observe(a, c, a.attn, seed, device))
            if a.capture is not None or not a.check_observe:
                path = None
                if a.capture is not None:
                    path = f"{a.capture}-s{seed}" if a.seeds is not None else a.capture
                rc = max(rc, train(a, c, a.attn, seed, device, path))
    except flashdrift_capture.CaptureError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
