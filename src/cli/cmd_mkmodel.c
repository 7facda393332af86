/* bitnet mkmodel: deterministic synthetic models of every family, in every input format users
 * hold (the family's own HF form, GGUF as bitnet.cpp writes it, or packed directly). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/parse.h"
#include "cli/cli_common.h"
#include "cli/commands.h"
#include "model/family.h"
#include "model/gguf.h"
#include "model/hf_write.h"
#include "model/source_synth.h"
#include "model/synth.h"
#include "text/tokenizer.h"

/* The output formats: one row each, the writer and its argument. */
enum fmt_writer { W_PACKED, W_HF, W_GGUF };
static const struct fmt {
    const char *name;
    enum fmt_writer writer;
    int a, b;            /* W_HF: enum bn_hf_form, shards; W_GGUF: the linears' ggml type */
    const char *help;
} formats[] = {
    {"packed", W_PACKED, 0, 0, "the packed model file (default)"},
    {"hf", W_HF, BN_HF_NATIVE, 1, "the family's own HF form (packed uint8; 1bitLLM: f32 latent)"},
    {"hf-bf16", W_HF, BN_HF_BF16, 1, "HF, bf16 latent weights"},
    {"hf-f16", W_HF, BN_HF_F16, 1, "HF, f16 latent weights"},
    {"hf-f32", W_HF, BN_HF_F32, 1, "HF, f32 latent weights"},
    {"hf-sharded", W_HF, BN_HF_NATIVE, 3, "HF in 3 safetensors shards + index"},
    {"gguf-i2_s", W_GGUF, BN_GGML_I2_S, 0, "GGUF as bitnet.cpp writes it (the family's arch), I2_S"},
    {"gguf-tq2_0", W_GGUF, BN_GGML_TQ2_0, 0, "GGUF, llama.cpp TQ2_0"},
    {"gguf-f16", W_GGUF, BN_GGML_F16, 0, "GGUF, F16 linears"},
    {"gguf-tl1", W_GGUF, BN_GGML_TL1, 0, "GGUF, bitnet.cpp TL1 (shapes with a kernel preset)"},
    {"gguf-tl2", W_GGUF, BN_GGML_TL2, 0, "GGUF, bitnet.cpp TL2 (shapes with a kernel preset)"},
};
#define N_FORMATS (sizeof formats / sizeof formats[0])

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bitnet mkmodel [options] SHAPE OUT\n"
            "  SHAPE   a preset, with optional overrides: 2b4t,n_layer=4,n_vocab=1024\n"
            "          BitNet 2B-4T: tiny | small | 2b4t\n"
            "          1bitLLM:      1bitllm-large | 1bitllm-3b\n"
            "          Llama3:       llama3-8b-1.58\n"
            "          Falcon3:      falcon3-1b-1.58 | falcon3-3b-1.58 | falcon3-7b-1.58 | falcon3-10b-1.58\n"
            "          tests:        tiny-1bitllm | tiny-llama3 | tiny-falcon3\n"
            "          overrides:    n_embd n_layer n_head n_head_kv n_ff n_vocab n_ctx_max rope_theta\n"
            "                        head_dim norm_eps family=NAME act=relu2|silu tied=0|1 sub_norms=0|1\n"
            "  OUT     output file (packed, gguf-*) or directory (hf-*)\n"
            "options:\n"
            "  -f, --format FMT     output format:\n");
    for (size_t i = 0; i < N_FORMATS; i++) fprintf(f, "                         %-11s %s\n", formats[i].name, formats[i].help);
    fprintf(f,
            "  -s, --seed N         weights seed (default 1)\n"
            "  -t, --tokenizer F    take the vocabulary from a HF tokenizer.json (default: the family's\n"
            "                       built-in one: byte-level BPE, SentencePiece for 1bitLLM, Falcon3's)\n"
            "      --ternary t5|i2  packed format: ternary packing (default t5)\n"
            "      --lm-head planes|i8|f16\n"
            "                       packed format: lm_head copies besides the f16 rows: the int8\n"
            "                       copy and its 2-bit planes (default planes), the int8 copy, none\n");
}

/* The vocabulary: tok_json's, or the family's built-in kind with the family's chat format
 * (the Llama-3-like kind is shared by 2B-4T and Llama3-8B, whose chat formats differ). */
static bn_vocab *make_vocab(const char *tok_json, const bn_synth *sy, bn_error *err)
{
    bn_vocab *v = NULL;
    uint32_t n_vocab = sy->cfg.n_vocab;
    if (!tok_json) {
        const bn_family_info *fi = bn_family_get((enum bn_family)sy->family);
        if (!fi) {
            bn_err(err, "unknown model family %u", sy->family);
            return NULL;
        }
        if ((v = bn_vocab_builtin_kind(fi->vocab, n_vocab, err))) v->chat = fi->chat;
        return v;
    }
    if (bn_vocab_load_hf(tok_json, NULL, &v, err) != 0) return NULL;
    if (v->n_tokens > n_vocab) {
        bn_err(err, "%s has %u tokens, more than the shape's n_vocab %u", tok_json, v->n_tokens, n_vocab);
        bn_vocab_free(v);
        return NULL;
    }
    return v;
}

static const struct fmt *find_format(const char *name)
{
    for (size_t i = 0; i < N_FORMATS; i++)
        if (!strcmp(formats[i].name, name)) return &formats[i];
    return NULL;
}

static int write_format(const struct fmt *fm, const bn_synth *sy, const bn_vocab *v, const char *out,
                        const bn_pack_opts *po, bn_error *err)
{
    if (fm->writer == W_HF) return bn_hf_write_synth_form(sy, v, out, (enum bn_hf_form)fm->a, fm->b, err);
    if (fm->writer == W_GGUF) return bn_gguf_write_synth(sy, v, out, fm->a, err);
    bn_source *src;
    if (bn_source_open_synth(sy, v, &src, err) != 0) return -1;
    bn_pack_opts o = *po;
    bn_cli_progress prog;
    bn_cli_progress_attach(&prog, &o, stderr);   /* a progress line only on a terminal */
    int rc = bn_pack_write(src, out, &o, err);
    bn_cli_progress_end(&prog);
    bn_source_close(src);
    return rc;
}

int cmd_mkmodel(int argc, char **argv)
{
    static const struct option opts[] = {{"format", required_argument, 0, 'f'}, {"seed", required_argument, 0, 's'},
                                         {"tokenizer", required_argument, 0, 't'}, BN_PACK_LONGOPTS,
                                         {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *tok = NULL;
    const struct fmt *fm = &formats[0];
    uint64_t seed = 1;
    bn_pack_opts po;
    bn_pack_opts_default(&po);
    bn_error err = {{0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "f:s:t:h", opts, NULL)) != -1) {
        int r = bn_pack_opt(c, optarg, &po);
        if (r == 1) continue;
        if (r < 0) {
            usage(stderr);
            return 2;
        }
        switch (c) {
        case 'f':
            if (!(fm = find_format(optarg))) {
                fprintf(stderr, "bitnet mkmodel: -f/--format: unknown format '%s' (see --help)\n", optarg);
                return 2;
            }
            break;
        case 's':
            if (bn_parse_u64(optarg, 0, UINT64_MAX, &seed, &err)) {
                fprintf(stderr, "bitnet mkmodel: -s/--seed: %s\n", err.msg);
                return 2;
            }
            break;
        case 't': tok = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (argc - optind != 2) {
        usage(stderr);
        return 2;
    }
    bn_synth sy = {0};
    bn_vocab *v = NULL;
    double t0 = bn_now();
    int rc = bn_synth_parse(argv[optind], &sy, &err);
    sy.seed = seed;
    if (rc == 0 && !(v = make_vocab(tok, &sy, &err))) rc = -1;
    if (rc == 0) {
        sy.cfg.bos = v->bos;
        sy.cfg.eos = v->eos;
        sy.cfg.eot = v->eot;
        rc = write_format(fm, &sy, v, argv[optind + 1], &po, &err);
    }
    bn_vocab_free(v);
    if (rc != 0) {
        fprintf(stderr, "bitnet mkmodel: %s\n", err.msg);
        return 1;
    }
    const bn_family_info *fi = bn_family_get((enum bn_family)sy.family);
    fprintf(stderr, "wrote %s (%s, shape %s, family %s, seed %llu) in %.2f s, peak RSS %.1f MiB\n",
            argv[optind + 1], fm->name, argv[optind], fi ? fi->name : "?", (unsigned long long)sy.seed,
            bn_now() - t0, bn_peak_rss_mib());
    return 0;
}
