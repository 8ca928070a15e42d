#!/usr/bin/env python3
"""flashdrift_capture: record the attention calls of one training step of a PyTorch model
as a capture run folder (docs/capture-format.md) that `flashdrift check --tensors RUN` and
`flashdrift compare RUN_A RUN_B` read (docs/loss-mismatch.md).

As a module (scripts/ on sys.path):

    import flashdrift_capture
    cap = flashdrift_capture.Capture("run", model, label="flash", output_name="flash",
                                     role="flash", functions=[(mymodule, "attend")])
    with cap:
        loss = model(x).loss
        loss.backward()
        cap.finish(loss)              # or: cap.loss = loss, written when the block exits
    optimizer.step()

Capture(out_dir, model=None, label="flash", output_name="flash", role="flash",
        functions=(), params=False, info=None, overwrite=False): out_dir must not hold a
capture already (CaptureError) unless overwrite; info is merged into capture.json's info;
update_info(**kv) rewrites capture.json with more info keys after finish.

While the block runs, `torch.nn.functional.scaled_dot_product_attention`,
`flash_attn.flash_attn_func` (when flash_attn is importable) and every registered
`(object, "attr")` function are replaced by recording wrappers (looked up by attribute at
call time: a name imported with `from torch.nn.functional import
scaled_dot_product_attention` before the block is not seen; register it as a function).
A registered function that is SDPA or flash_attn_func itself is recorded as that op; any
other registered function must take q, k, v as its first three arguments (layout bhsd
unless told: `(obj, "attr", {"layout": "bshd", "mask": "causal", "scale": 0.125})`),
its mask from an `is_causal` or `causal` argument, its scale from `scale`,
`softmax_scale` or `sm_scale` (default 1/sqrt(dim)); an `attn_mask`/`mask` argument that
is not None or a `dropout_p`/`dropout` above 0 makes the call "not captured".

Per call it writes a bundle (docs/import.md, layout bhsd for SDPA, bshd for
flash_attn_func): q, k, v as the call received them, out_NAME as it returned, lse_NAME
when the op returned it (flash_attn_func with return_attn_probs=True), and after the
backward dO (`do`) and the gradients of the call's own arguments dq_NAME, dk_NAME,
dv_NAME, and used_NAME: the first input of the first module called after the attention
call whose shape is (batch, seqlen_q, heads x dim) (typically the output projection's
input: the output as the model consumed it). Gradients are read through identity aliases
(`q.view_as(q)`) passed to the real function and tensor hooks that only copy (they return
None): the step's numbers are not changed (scripts/examples/vit_loss_mismatch.py
--check-observe checks the loss and every parameter gradient bit for bit). Calls the
bundle format cannot represent (an attn_mask tensor, dropout through SDPA, whose Philox
seed and offset PyTorch does not return, sliding windows, softcap, ALiBi, other dtypes)
are listed in capture.json with "bundle": null and the reason. Module names come from a
global forward pre-hook/forward hook stack and model.named_modules(): a call's module is
the innermost module running. `params=True` also writes params.safetensors with every
parameter's .grad (needs the safetensors package; otherwise info says why it is absent).

Overhead: the tensors are copied to the CPU as the step runs (a device synchronisation
per copy) and written after the backward; only the captured step pays. Measured with the
example on a shared 2-core CPU (torch 2.15.0, `python3 scripts/examples/
vit_loss_mismatch.py --device cpu --attn eager --capture RUN`, 6 attention calls, 60 .npy
files): a 7.9 ms forward + backward became 22 ms (+14 ms: 1.5 ms in the capture's
wrappers and hooks, 5.9 ms writing); in bf16 autocast (sdpa) 13 ms became 28-35 ms. The
example records it as info.overhead_s (medians of three steps with and without);
info.capture_s is the time spent in the capture's own wrappers and hooks, info.write_s
the time to write the folder (docs/loss-mismatch.md).

As a program, around someone else's training script (no change to it):

    python3 scripts/flashdrift_capture.py --out RUN [--label L] [--output-name N]
        [--role flash|standard] [--function MODULE:ATTR ...] [--params] [--overwrite]
        SCRIPT.py [ARGS...]

runs SCRIPT.py as __main__ (runpy, sys.argv = [SCRIPT.py, ARGS...]) with the capture
active from the start; the step captured is the first call of `torch.Tensor.backward`
(the loss is the tensor backward was called on): the attention calls whose outputs lead
to that loss (calls made with autograd off, or outside the loss's graph, are dropped), and
the folder is written as soon as that backward returns; the script then goes on
uncaptured. The model is the outermost module running at the first attention call.
`torch.autograd.backward(loss)` is not intercepted. Exit status: the script's, 1 when the
script never called backward, 2 for bad arguments.
"""
import argparse
import importlib
import importlib.util
import json
import math
import os
import re
import shutil
import sys
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F

FORMAT = "flashdrift-capture-1"
BUNDLE_FORMAT = "flashdrift-bundle-1"
NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_WRITTEN = ("capture.json", "params.safetensors")
_CALL_DIR = re.compile(r"^call-[0-9]{4,}$")


class CaptureError(Exception):
    """A problem with how the capture was asked for (bad name, occupied folder)."""


def to_np(t):
    """A CPU tensor as the numpy array a bundle stores (bf16 as its uint16 words)."""
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    if t.dtype == torch.bool:
        return t.numpy().astype(np.uint8)
    return t.numpy()


def _npy_save(path, t):
    np.save(path, np.ascontiguousarray(to_np(t)), allow_pickle=False)


def _copy(t):
    """A detached CPU copy (never the tensor itself: later in-place updates must not show)."""
    return t.detach().to("cpu", copy=True)


def _num(x, default):
    if x is None:
        return default
    if isinstance(x, torch.Tensor):
        return x.item()
    return x


class _Spec:
    """How to read one op's arguments. kind: sdpa, flash_attn or user."""

    def __init__(self, kind, op, layout="bhsd", options=None, fn=None):
        self.kind, self.op, self.layout = kind, op, layout
        self.options = dict(options or {})
        self.params = None
        if kind == "user" or kind == "flash_attn":
            import inspect
            try:
                self.params = inspect.signature(fn)
            except (TypeError, ValueError) as e:
                raise CaptureError(f"{op}: cannot read its signature ({e})") from e
            if kind == "user" and len(self.params.parameters) < 3:
                raise CaptureError(f"{op}: a registered function takes q, k, v as its first three arguments")

    def parse(self, args, kwargs):
        """(bound arguments by name, the names of q, k, v) or raises TypeError."""
        if self.kind == "sdpa":
            if len(args) > len(SDPA_ARGS):
                raise TypeError("too many positional arguments")
            b = dict(zip(SDPA_ARGS, args))
            for n, v in kwargs.items():
                if n in b:
                    raise TypeError(f"argument {n} given twice")
                b[n] = v
            return b, SDPA_ARGS[:3]
        ba = self.params.bind(*args, **kwargs)
        ba.apply_defaults()
        names = tuple(list(self.params.parameters)[:3])
        return dict(ba.arguments), names

    def describe(self, b, qkv_names):
        """(mask, scale or None, dropout_p, reason not captured or None, want_lse)."""
        o = self.options
        if self.kind == "sdpa":
            if b.get("attn_mask") is not None:
                return None, None, 0.0, "attn_mask tensor (the bundle represents no mask or is_causal only)", False
            p = float(_num(b.get("dropout_p"), 0.0))
            mask = "causal" if bool(b.get("is_causal", False)) else "none"
            return mask, _num(b.get("scale"), None), p, None, False
        if self.kind == "flash_attn":
            p = float(_num(b.get("dropout_p"), 0.0))
            ws = b.get("window_size", (-1, -1))
            if ws is not None and tuple(ws) != (-1, -1):
                return None, None, p, f"window_size {tuple(ws)} (sliding-window attention)", False
            if float(_num(b.get("softcap"), 0.0)) != 0.0:
                return None, None, p, "softcap", False
            if b.get("alibi_slopes") is not None:
                return None, None, p, "alibi_slopes", False
            mask = "causal_br" if bool(b.get("causal", False)) else "none"
            return mask, _num(b.get("softmax_scale"), None), p, None, bool(b.get("return_attn_probs", False))
        # a registered user function
        for n in ("attn_mask", "mask"):
            if n in b and b[n] is not None and "mask" not in o:
                return None, None, 0.0, f"{n} argument (the bundle represents no mask or causal only)", False
        p = 0.0
        for n in ("dropout_p", "dropout"):
            if n in b and b[n] is not None and not isinstance(b[n], torch.nn.Module):
                p = float(_num(b[n], 0.0))
        if "mask" in o:
            mask = o["mask"]
        else:
            mask = "none"
            for n in ("is_causal", "causal"):
                if n in b and bool(b[n]):
                    mask = "causal"
        scale = o.get("scale")
        if scale is None:
            for n in ("scale", "softmax_scale", "sm_scale"):
                if n in b and b[n] is not None:
                    scale = _num(b[n], None)
        return mask, scale, p, None, False


class _Call:
    def __init__(self, op, module):
        self.op, self.module = op, module
        self.reason = None          # why not captured, or None
        self.notes = []
        self.t = {}                 # name -> CPU tensor (q, k, v, out, lse, used)
        self.grads = {}             # do, dq, dk, dv
        self.layout = "bhsd"
        self.mask = "none"
        self.scale = None
        self.dropout_p = 0.0
        self.dtype = None
        self.out_node = None
        self.want_grads = False
        self.device = None


class Capture:
    """Records the attention calls of one training step; see the module's docstring."""

    def __init__(self, out_dir, model=None, label="flash", output_name="flash", role="flash",
                 functions=(), params=False, info=None, overwrite=False, step_mode=False):
        if not isinstance(label, str) or not label:
            raise CaptureError("label: a non-empty string is needed")
        if not isinstance(output_name, str) or not NAME_RE.match(output_name):
            raise CaptureError(f"output name {output_name!r}: letters, digits, '_' and '-' only")
        if role not in ("flash", "standard"):
            raise CaptureError(f"role {role!r}: expected flash or standard")
        self.out_dir = out_dir
        self.model = model
        self.label, self.name, self.role = label, output_name, role
        self.want_params = bool(params)
        self.info = dict(info or {})
        self.loss = None
        self.step_mode = step_mode   # the command line's mode: keep only calls of the loss's graph
        self._check_out_dir(overwrite)
        self._functions = []
        for f in functions:
            if not isinstance(f, (tuple, list)) or len(f) not in (2, 3) or not isinstance(f[1], str):
                raise CaptureError("functions: each entry is (object, 'attr') or (object, 'attr', {options})")
            if not hasattr(f[0], f[1]):
                raise CaptureError(f"functions: {f[0]!r} has no attribute {f[1]!r}")
            opts = dict(f[2]) if len(f) == 3 else {}
            bad = set(opts) - {"layout", "mask", "scale"}
            if bad:
                raise CaptureError(f"functions: unknown option(s) {sorted(bad)} for {f[1]}")
            if opts.get("layout", "bhsd") not in ("bhsd", "bshd"):
                raise CaptureError(f"functions: layout {opts['layout']!r}: expected bhsd or bshd")
            if opts.get("mask", "none") not in ("none", "causal", "causal_br"):
                raise CaptureError(f"functions: mask {opts['mask']!r}: expected none, causal or causal_br")
            self._functions.append((f[0], f[1], opts))
        self.calls = []
        self._patches = []
        self._handles = []
        self._stack = []
        self._pending = None
        self._tls = threading.local()
        self._active = False
        self._finished = False
        self._self_s = 0.0
        self._names_cache = {}
        self.root = model

    # ---------------------------------------------------------------- setup
    def _check_out_dir(self, overwrite):
        d = self.out_dir
        if os.path.exists(d) and not os.path.isdir(d):
            raise CaptureError(f"{d}: exists and is not a directory")
        if os.path.isdir(d):
            ours = [n for n in os.listdir(d) if n in _WRITTEN or _CALL_DIR.match(n)]
            if ours and not overwrite:
                raise CaptureError(f"{d}: already holds a capture ({ours[0]}); choose another folder or overwrite")

    def _clear_out_dir(self):
        d = self.out_dir
        if not os.path.isdir(d):
            return
        for n in os.listdir(d):
            p = os.path.join(d, n)
            if _CALL_DIR.match(n) and os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            elif n in _WRITTEN and os.path.isfile(p):
                os.remove(p)

    def _patch(self, obj, attr, spec):
        orig = getattr(obj, attr)
        self._patches.append((obj, attr, orig))
        setattr(obj, attr, self._wrap(orig, spec))

    def __enter__(self):
        if self._active:
            raise CaptureError("the capture is already active")
        if self._finished:
            raise CaptureError("the capture has been written already; make a new Capture")
        sdpa = F.scaled_dot_product_attention
        fa_funcs = set()
        fa_mods = []
        if importlib.util.find_spec("flash_attn") is not None:
            try:
                import flash_attn  # noqa: F401
                fa_mods.append(flash_attn)
                fa_funcs.add(flash_attn.flash_attn_func)
                try:
                    from flash_attn import flash_attn_interface
                    fa_mods.append(flash_attn_interface)
                    fa_funcs.add(flash_attn_interface.flash_attn_func)
                except ImportError:
                    pass
            except Exception as e:  # noqa: BLE001 - a broken install must not stop the step
                self.info.setdefault("notes", []).append(f"flash_attn not patched: {type(e).__name__}: {e}")
                fa_mods = []
        try:
            self._patch(F, "scaled_dot_product_attention", _Spec("sdpa", "sdpa"))
            for m in fa_mods:
                if getattr(m, "flash_attn_func", None) is not None:
                    self._patch(m, "flash_attn_func", _Spec("flash_attn", "flash_attn_func", "bshd",
                                                            fn=m.flash_attn_func))
            for obj, attr, opts in self._functions:
                fn = getattr(obj, attr)
                if fn is sdpa:
                    spec = _Spec("sdpa", "sdpa")
                elif fn in fa_funcs:
                    spec = _Spec("flash_attn", "flash_attn_func", "bshd", fn=fn)
                else:
                    spec = _Spec("user", attr, opts.get("layout", "bhsd"), opts, fn=fn)
                self._patch(obj, attr, spec)
            mm = torch.nn.modules.module
            self._handles.append(mm.register_module_forward_pre_hook(self._pre_hook))
            try:
                self._handles.append(mm.register_module_forward_hook(self._post_hook, always_call=True))
            except TypeError:
                self._handles.append(mm.register_module_forward_hook(self._post_hook))
        except Exception:
            self._restore()
            raise
        self._active = True
        return self

    def _restore(self):
        for obj, attr, orig in reversed(self._patches):
            setattr(obj, attr, orig)
        self._patches = []
        for h in self._handles:
            h.remove()
        self._handles = []
        self._stack = []
        self._pending = None
        self._active = False

    def __exit__(self, exc_type, exc, tb):
        self._restore()
        if exc_type is None and not self._finished and self.loss is not None:
            self.finish(self.loss)
        return False

    # ---------------------------------------------------------------- module stack
    def _pre_hook(self, module, args):
        t0 = time.perf_counter()
        self._stack.append(module)
        pend = self._pending
        if pend is not None:
            call, shape = pend
            for x in args:
                if isinstance(x, torch.Tensor) and tuple(x.shape) == shape:
                    self._pending = None
                    if x.dtype == call.t["q"].dtype:
                        call.t["used"] = _copy(x)
                    else:
                        call.notes.append(f"used output not written: the consuming module's input is "
                                          f"{x.dtype}, q is {call.t['q'].dtype}")
                    break
        self._self_s += time.perf_counter() - t0

    def _post_hook(self, module, args, output):
        st = self._stack
        if st and st[-1] is module:
            st.pop()
        else:
            for i in range(len(st) - 1, -1, -1):
                if st[i] is module:
                    del st[i]
                    break

    def _names(self, root):
        key = id(root)
        if key not in self._names_cache:
            self._names_cache[key] = {id(m): n for n, m in root.named_modules()}
        return self._names_cache[key]

    def _module_name(self):
        root = self.root
        if root is None:
            if not self._stack:
                return ""
            root = self.root = self._stack[0]
        names = self._names(root)
        for m in reversed(self._stack):
            n = names.get(id(m))
            if n is not None:
                return n
        return ""

    # ---------------------------------------------------------------- the wrapper
    def _wrap(self, real, spec):
        cap = self

        def wrapper(*args, **kwargs):
            if getattr(cap._tls, "depth", 0) > 0 or not cap._active:
                return real(*args, **kwargs)
            cap._tls.depth = 1
            try:
                return cap._record(real, spec, args, kwargs)
            finally:
                cap._tls.depth = 0

        wrapper.__wrapped__ = real
        wrapper.__name__ = getattr(real, "__name__", spec.op)
        wrapper.__doc__ = getattr(real, "__doc__", None)
        return wrapper

    def _record(self, real, spec, args, kwargs):
        t0 = time.perf_counter()
        self._pending = None
        try:
            b, names = spec.parse(args, kwargs)
        except TypeError:
            # let the real function raise its own error
            return real(*args, **kwargs)
        call = _Call(spec.op, self._module_name())
        call.layout = spec.layout
        q, k, v = (b.get(n) for n in names)
        mask, scale, p, reason, want_lse = spec.describe(b, names)
        call.mask, call.dropout_p = mask, p
        if reason is None:
            reason = self._check_inputs(q, k, v, p, spec)
        call.reason = reason
        args, kwargs = list(args), dict(kwargs)
        aliases = {}
        if reason is None:
            call.dtype = DTYPES[q.dtype]
            call.device = q.device
            d = q.shape[-1]
            call.scale = float(np.float32(1.0 / math.sqrt(d) if scale is None else float(scale)))
            for n, t in (("q", q), ("k", k), ("v", v)):
                call.t[n] = _copy(t)
            if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
                distinct = q is not k and q is not v and k is not v
                made = {}
                new = []
                for n, t in (("q", q), ("k", k), ("v", v)):
                    if id(t) not in made:
                        made[id(t)] = t.view_as(t) if t.requires_grad else t
                    a = made[id(t)]
                    new.append(a)
                    if distinct and t.requires_grad:
                        aliases[n] = a
                if not distinct:
                    call.notes.append("q, k, v share a tensor: autograd sums their gradients, "
                                      "which cannot be told apart; no gradients written")
                for i, a in enumerate(new):
                    if i < len(args):
                        args[i] = a
                    else:
                        kwargs[names[i]] = a
                call.want_grads = distinct and len(aliases) == 3
                if distinct and len(aliases) != 3:
                    call.notes.append("not every one of q, k, v requires grad: no gradients written")
            else:
                call.notes.append("autograd off or q, k, v need no gradient: no gradients written")
        self._self_s += time.perf_counter() - t0
        res = real(*args, **kwargs)
        t1 = time.perf_counter()
        out = res[0] if isinstance(res, (tuple, list)) else res
        if call.reason is None:
            call.reason = self._check_output(call, q, out)
        if call.reason is None:
            call.t["out"] = _copy(out)
            if want_lse and isinstance(res, (tuple, list)) and len(res) > 1 and isinstance(res[1], torch.Tensor):
                lse = res[1]
                sq = q.shape[1] if spec.layout == "bshd" else q.shape[2]
                if lse.dim() == 3:
                    call.t["lse"] = _copy(lse[:, :, :sq].float())
            if call.want_grads and out.requires_grad:
                for n, a in aliases.items():
                    a.register_hook(self._grad_hook(call, "d" + n))
                out.register_hook(self._grad_hook(call, "do"))
            elif call.want_grads:
                call.want_grads = False
                call.notes.append("the output does not require grad: no gradients written")
            if spec.layout == "bhsd":
                shape = (q.shape[0], q.shape[2], q.shape[1] * v.shape[3])
            else:
                shape = (q.shape[0], q.shape[1], q.shape[2] * v.shape[3])
            self._pending = (call, tuple(int(x) for x in shape))
        if isinstance(out, torch.Tensor):
            call.out_node = out.grad_fn
        if not (self.step_mode and call.out_node is None):
            self.calls.append(call)
        self._self_s += time.perf_counter() - t1
        return res

    @staticmethod
    def _check_inputs(q, k, v, p, spec):
        if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
            return "q, k and v are not all tensors"
        if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
            return f"q, k, v of {q.dim()}, {k.dim()}, {v.dim()} dimensions (the bundle holds 4-d tensors)"
        if q.dtype not in DTYPES:
            return f"dtype {q.dtype} (the bundle holds fp16, bf16 and fp32)"
        if k.dtype != q.dtype or v.dtype != q.dtype:
            return f"q, k, v of different dtypes ({q.dtype}, {k.dtype}, {v.dtype})"
        if p > 0:
            if spec.kind == "user":
                return f"dropout_p {p:g} in a registered function (its random numbers are not known)"
            return f"dropout_p {p:g} without the generator's seed and offset"
        if tuple(k.shape) != tuple(v.shape):
            return f"v's shape {tuple(v.shape)} differs from k's {tuple(k.shape)}"
        hd = 1 if spec.layout == "bhsd" else 2
        if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
            return f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree in batch or head dim"
        if k.shape[hd] == 0 or q.shape[hd] % k.shape[hd] != 0:
            return f"{q.shape[hd]} query heads are not a multiple of {k.shape[hd]} key heads"
        return None

    @staticmethod
    def _check_output(call, q, out):
        if not isinstance(out, torch.Tensor):
            return "the call returned no tensor"
        if tuple(out.shape) != tuple(q.shape):
            return f"output of shape {tuple(out.shape)}, expected q's {tuple(q.shape)}"
        if out.dtype != q.dtype:
            return (f"output of dtype {out.dtype} from inputs of {q.dtype} (autocast cast them inside "
                    "the call: the kernel's inputs were not recorded)")
        return None

    def _grad_hook(self, call, name):
        def hook(g):
            t0 = time.perf_counter()
            if name in call.grads:
                call.notes.append(f"{name}: a second gradient arrived (another backward); the first is kept")
            elif g is not None:
                call.grads[name] = _copy(g)
            self._self_s += time.perf_counter() - t0
            return None
        return hook

    # ---------------------------------------------------------------- writing
    def finish(self, loss):
        """Write the run folder for the step whose loss is `loss`; returns its path."""
        if self._finished:
            raise CaptureError("finish: the capture has been written already")
        t0 = time.perf_counter()
        calls = self.calls
        if self.step_mode and isinstance(loss, torch.Tensor) and loss.grad_fn is not None:
            reach = _graph_nodes(loss.grad_fn)
            calls = [c for c in calls if c.out_node is not None and c.out_node in reach]
        if not calls:
            raise CaptureError("no attention call was seen: nothing to write (the capture format needs at least one call)")
        self._finished = True
        for c in self.calls:
            c.out_node = None        # let the step's graph go
        loss_value = float(loss.detach().float().item()) if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(loss_value):
            raise CaptureError(f"the loss is {loss_value}: JSON cannot hold it")
        self._clear_out_dir()
        os.makedirs(self.out_dir, exist_ok=True)
        root = self.model if self.model is not None else self.root
        info = {"torch": torch.__version__, "capture": "scripts/flashdrift_capture.py"}
        dev = self._device_name(calls)
        if dev:
            info["device"] = dev
        info["deterministic"] = bool(torch.are_deterministic_algorithms_enabled())
        info.update(self.info)
        entries = []
        for i, c in enumerate(calls):
            entries.append(self._write_call(i, c, info))
        if self.want_params:
            info["params"] = self._write_params(root)
        info["capture_s"] = round(self._self_s, 4)
        info["write_s"] = round(time.perf_counter() - t0, 4)
        self._index = {"format": FORMAT, "model": type(root).__name__ if root is not None else "unknown",
                       "label": self.label, "loss": loss_value, "info": info, "calls": entries}
        self._write_index()
        return self.out_dir

    def update_info(self, **kv):
        """Add keys to info and rewrite capture.json (e.g. the losses of later steps)."""
        if not self._finished:
            raise CaptureError("update_info: nothing has been written yet")
        self._index["info"].update(kv)
        self._write_index()

    def _write_index(self):
        path = os.path.join(self.out_dir, "capture.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self._index, f, indent=1, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)

    @staticmethod
    def _device_name(calls):
        for c in calls:
            if c.device is not None and c.device.type == "cuda":
                try:
                    return torch.cuda.get_device_name(c.device)
                except Exception:  # noqa: BLE001
                    return str(c.device)
        return "cpu" if any(c.device is not None for c in calls) else None

    def _write_call(self, i, c, info):
        e = {"index": i}
        if c.reason is None:
            for n in ("q", "k", "v"):
                if not torch.isfinite(c.t[n].float()).all():
                    c.reason = f"{n} holds NaN or Inf (the reference needs finite inputs)"
                    break
        if c.reason is not None:
            e.update({"bundle": None, "module": c.module, "op": c.op, "not_captured": c.reason})
            return e
        name = f"call-{i:04d}"
        path = os.path.join(self.out_dir, name)
        os.makedirs(path)
        N = self.name
        t = dict(c.t)
        files = {"q": t["q"], "k": t["k"], "v": t["v"], f"out_{N}": t["out"]}
        if "lse" in t:
            files[f"lse_{N}"] = t["lse"]
        if "used" in t:
            files[f"used_{N}"] = t["used"]
        grads = c.grads
        meta_det = None
        if c.want_grads:
            missing = [g for g in ("do", "dq", "dk", "dv") if g not in grads]
            if missing:
                c.notes.append(f"no gradients written: {', '.join(missing)} never arrived (no backward through this call?)")
            elif not torch.isfinite(grads["do"].float()).all():
                c.notes.append("no gradients written: dO holds NaN or Inf")
            elif any(grads[g].dtype != t["q"].dtype for g in ("do", "dq", "dk", "dv")):
                c.notes.append("no gradients written: a gradient's dtype differs from q's")
            else:
                files["do"] = grads["do"]
                for g in ("dq", "dk", "dv"):
                    files[f"{g}_{N}"] = grads[g]
                meta_det = bool(torch.are_deterministic_algorithms_enabled())
        for n, x in files.items():
            _npy_save(os.path.join(path, n + ".npy"), x)
        binfo = {"capture": info.get("capture"), "torch": torch.__version__, "run_label": self.label,
                 "call": i, "module": c.module, "op": c.op}
        if "device" in info:
            binfo["device"] = info["device"]
        if c.notes:
            binfo["notes"] = list(c.notes)
        meta = {"format": BUNDLE_FORMAT, "layout": c.layout, "mask": c.mask, "dtype": c.dtype,
                "scale": c.scale, "dropout_p": c.dropout_p, "roles": {N: self.role}, "info": binfo}
        if meta_det is not None:
            meta["deterministic"] = meta_det
        with open(os.path.join(path, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1, allow_nan=False)
            f.write("\n")
        e.update({"bundle": name, "module": c.module, "op": c.op, "output": N,
                  "q_shape": [int(x) for x in t["q"].shape], "k_shape": [int(x) for x in t["k"].shape],
                  "dtype": c.dtype, "causal": c.mask != "none", "dropout_p": c.dropout_p})
        return e

    def _write_params(self, root):
        if root is None:
            return "not written: no model"
        try:
            from safetensors.torch import save_file
        except ImportError:
            return "not written: the safetensors package is not installed"
        tensors = {}
        for n, p in root.named_parameters():
            if p.grad is not None:
                tensors[n] = p.grad.detach().to("cpu", copy=True).contiguous()
        if not tensors:
            return "not written: no parameter has a gradient"
        save_file(tensors, os.path.join(self.out_dir, "params.safetensors"))
        return f"params.safetensors: {len(tensors)} gradients"


def _graph_nodes(fn):
    seen = set()
    todo = [fn]
    while todo:
        n = todo.pop()
        if n is None or n in seen:
            continue
        seen.add(n)
        for nx, _ in getattr(n, "next_functions", ()):
            if nx is not None and nx not in seen:
                todo.append(nx)
    return seen


# -------------------------------------------------------------------- command line
def _parse_function(s):
    mod, sep, attr = s.partition(":")
    if not sep or not mod or not attr:
        raise CaptureError(f"--function {s!r}: expected MODULE:ATTR (e.g. mymodel.attention:attend)")
    try:
        obj = importlib.import_module(mod)
    except Exception as e:  # noqa: BLE001
        raise CaptureError(f"--function {s!r}: cannot import {mod}: {type(e).__name__}: {e}") from e
    *path, last = attr.split(".")
    for p in path:
        obj = getattr(obj, p, None)
        if obj is None:
            raise CaptureError(f"--function {s!r}: {mod} has no {p}")
    if not hasattr(obj, last):
        raise CaptureError(f"--function {s!r}: {mod} has no attribute {attr}")
    return (obj, last)


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="flashdrift_capture.py",
        description="Run a PyTorch training script and capture the attention calls of its first "
                    "backward step as a flashdrift capture folder (docs/capture-format.md).")
    ap.add_argument("--out", required=True, help="the run folder to write (capture.json, call-NNNN/)")
    ap.add_argument("--label", default="flash", help="what this run is, shown in reports (default flash)")
    ap.add_argument("--output-name", default=None, help="the bundles' output NAME (default: the label if it is a valid NAME, else flash)")
    ap.add_argument("--role", default="flash", choices=("flash", "standard"), help="the output's role (default flash)")
    ap.add_argument("--function", action="append", default=[], metavar="MODULE:ATTR",
                    help="also record this attention function (imported before the script runs); repeatable")
    ap.add_argument("--params", action="store_true", help="also write params.safetensors (every parameter's gradient)")
    ap.add_argument("--overwrite", action="store_true", help="replace a capture already in --out")
    ap.add_argument("script", help="the training script, run as __main__")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    a = ap.parse_args(argv)
    name = a.output_name if a.output_name is not None else (a.label if NAME_RE.match(a.label) else "flash")
    if not os.path.isfile(a.script):
        print(f"flashdrift_capture.py: {a.script}: no such file", file=sys.stderr)
        return 2
    script = os.path.abspath(a.script)
    sys.path.insert(0, os.path.dirname(script))
    try:
        funcs = [_parse_function(s) for s in a.function]
        cap = Capture(a.out, None, label=a.label, output_name=name, role=a.role, functions=funcs,
                      params=a.params, overwrite=a.overwrite, step_mode=True)
    except CaptureError as e:
        print(f"flashdrift_capture.py: {e}", file=sys.stderr)
        return 2
    real_backward = torch.Tensor.backward
    state = {"done": False, "error": None}

    def backward(self, *args, **kwargs):
        if state["done"]:
            return real_backward(self, *args, **kwargs)
        state["done"] = True
        try:
            return real_backward(self, *args, **kwargs)
        finally:
            torch.Tensor.backward = real_backward
            cap._restore()
            try:
                cap.finish(self)
                n = sum(1 for c in cap._index["calls"] if c["bundle"])
                print(f"flashdrift_capture.py: {a.out}: {len(cap._index['calls'])} attention calls, {n} captured, "
                      f"loss {cap._index['loss']:.9g}", file=sys.stderr)
            except (CaptureError, OSError) as e:
                state["error"] = str(e)
                print(f"flashdrift_capture.py: {a.out}: {e}", file=sys.stderr)

    import runpy
    cap.__enter__()
    torch.Tensor.backward = backward
    old_argv = sys.argv
    sys.argv = [a.script] + list(a.args)
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    finally:
        sys.argv = old_argv
        torch.Tensor.backward = real_backward
        cap._restore()
    if not state["done"]:
        print(f"flashdrift_capture.py: {a.script} never called Tensor.backward: nothing captured", file=sys.stderr)
        return code or 1
    if state["error"]:
        return code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
