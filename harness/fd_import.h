/* fd_import.h: bundles of tensors dumped by someone else's attention (PyTorch SDPA,
 * flash-attn, a user's kernel), read as the `import` backend; docs/import.md is the
 * format's reference.
 *
 * A bundle is a directory (meta.json + one .npy file per tensor) or one .safetensors
 * file (the same names; meta in "__metadata__", string values). Tensors: q, k, v
 * (required), out_NAME (an output of path NAME, any number up to FD_MAX_BACKENDS),
 * lse_NAME ([b][h][s_q] fp32), dmask_NAME (the dropout mask path NAME applied,
 * [b][h][s_q][s_k] uint8/bool, 1 = kept), do (the output gradient, like q) and per
 * output dq_NAME, dk_NAME, dv_NAME (its gradients for do: like q, k, v, the bundle's
 * dtype; all three or none; they need do and out_NAME). Meta: layout "bshd" or "bhsd" (required,
 * never guessed), mask "none" | "causal" (= "causal_tl", PyTorch is_causal) |
 * "causal_br" (required), dtype (required for npy '<u2', which then means bf16),
 * scale (default 1/sqrt(d) as a float), dropout_p (default 0), seed and offset (FA2
 * Philox; required when dropout_p > 0), roles ({NAME: "flash" | "standard"}; default:
 * standard when NAME contains math, eager, standard or ref, else flash), info (free),
 * deterministic (true/false: torch.are_deterministic_algorithms_enabled() when the
 * gradients were made; has_deterministic says whether it was given). used_NAME (captures:
 * the output as the model consumed it, (batch, seqlen_q, heads x dim), the dtype).
 *
 * fd_bundle_load validates everything (shapes agree, dtypes agree and are supported,
 * q/k/v finite) and converts tensors to fd_problem's layouts (floats holding the exact
 * dtype values). Every error names the file and the problem. */
#ifndef FD_IMPORT_H
#define FD_IMPORT_H
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include "fd_case.h"
#include "fd_problem.h"
#include "fd_run.h"

typedef struct fd_import_output {
    char name[64];
    fd_backend be;  /* name, family "import", role; run is NULL (the output is given) */
    float *o;       /* [b][s_q][h][d] */
    float *lse;     /* [b][h][s_q], or NULL */
    uint8_t *keep;  /* [b][h][s_q][s_k], 1 kept, or NULL */
    float *dq, *dk, *dv; /* dq_NAME, dk_NAME, dv_NAME (like q, k, v; all three or none), or NULL */
    float *used;    /* used_NAME: the output as the model consumed it, [b][s_q][h * d] as stored
                     * (captures, docs/capture-format.md), or NULL */
} fd_import_output;

typedef struct fd_bundle {
    char path[1024];
    char name[160];      /* the bundle's base name (case id) */
    int safetensors;     /* 1: one .safetensors file; 0: a directory of .npy */
    int bhsd;            /* declared layout */
    fd_problem prob;
    float *q, *k, *v;    /* fd_problem layouts */
    float *dout;         /* "do": the output gradient (like q), or NULL; required by gradients */
    int nout;
    fd_import_output out[FD_MAX_BACKENDS];
    json_t *info;        /* meta "info" (or NULL) */
    int has_deterministic; /* meta "deterministic" was given: */
    int deterministic;     /* torch.are_deterministic_algorithms_enabled() when the bundle was made */
    int *block_table;      /* paged KV cache: the table prob.block_table points into (or NULL) */
} fd_bundle;

int fd_bundle_load(const char *path, fd_bundle *b, char *err, size_t errlen);
void fd_bundle_free(fd_bundle *b);
/* Writes b as a bundle: a directory of .npy (bf16 as '<u2' with meta dtype bf16) or one
 * .safetensors file, in layout bhsd or bshd. info may be NULL. */
int fd_bundle_write(const fd_bundle *b, const char *path, int safetensors, int bhsd, char *err,
                    size_t errlen);
/* PATH is a bundle, or a directory of bundles (subdirectories with meta.json and
 * *.safetensors files, sorted by name). Fills *paths (caller frees each and the array). */
int fd_bundle_list(const char *path, char ***paths, int *n, char *err, size_t errlen);

/* g: the bundle's inputs and its outputs as given ones (fd_run.h), leaving out output
 * `skip` (-1: none) and, when only_standard, every flash output. g points into b. */
void fd_bundle_given(const fd_bundle *b, int skip, int only_standard, fd_given *g);

/* A case file over imported tensors (`check`, `explain --tensors`): one case per bundle
 * (paths and the array are taken over: freed by fd_casefile_free), id = the bundle's name,
 * inputs and outputs given (fd_run_case loads the bundle). The replay's knobs are the
 * tensor-core order (imported outputs come from GPUs); the policy is the default one.
 * cf->ncases is 0 when out of memory. */
void fd_casefile_bundles(fd_casefile *cf, const char *source, char **paths, int n, int rows_per_head);

/* FlashAttention-2's forward key tile (kBlockN) for a problem, as its launcher picks it on
 * sm_80 and sm_90 (csrc/flash_attn/src/flash_fwd_launch_template.h, run_mha_fwd_hdimN, head
 * dims rounded up to 32, 64, 96, 128, 192, 256): 128 for head dims up to 32, and up to 64
 * without dropout; 32 for head dims 97..128 with dropout; 64 otherwise. 0 for a paged
 * problem (FA2 runs its split-KV kernel there, other tiles) and for dtypes other than fp16
 * and bf16 (FA2 has no such kernel). */
int fd_fa2_fwd_key_tile(const fd_problem *p);

/* The replay configuration of imported outputs: the defaults with the tensor-core order
 * (imported outputs come from GPUs) and, for a problem p (may be NULL), FlashAttention-2's
 * key tile (fd_fa2_fwd_key_tile, when not 0). */
void fd_import_flash_cfg(const fd_problem *p, fd_flash_cfg *c);

/* The case file an imported bundle is replayed with: cf with the replay's key tile set to
 * FlashAttention-2's for the bundle's problem (fd_fa2_fwd_key_tile; unchanged when that is
 * 0). *out shares cf's pointers: pass it where cf goes, never free it. */
void fd_casefile_for_bundle(const fd_casefile *cf, const fd_problem *p, fd_casefile *out);
#endif
