/* bitnet mkmodel: deterministic synthetic models in every input format users hold. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "model/gguf.h"
#include "model/hf_write.h"
#include "model/source_synth.h"
#include "model/synth.h"
#include "text/tokenizer.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bitnet mkmodel [options] SHAPE OUT\n"
            "  SHAPE   tiny | small | 2b4t, with optional overrides: 2b4t,n_layer=4,n_vocab=1024\n"
            "  OUT     output file (packed, gguf-*) or directory (hf-*)\n"
            "options:\n"
            "  -f, --format FMT     packed (default) | hf (packed uint8) | hf-bf16 (latent) | hf-sharded |\n"
            "                       gguf-i2_s | gguf-tq2_0 | gguf-f16\n"
            "  -s, --seed N         weights seed (default 1)\n"
            "  -t, --tokenizer F    take the vocabulary from a HF tokenizer.json (default: built-in byte-level)\n"
            "      --ternary t5|i2  packed format: ternary packing (default t5)\n"
            "      --lm-head i8|f16 packed format: also store an int8 lm_head (default i8)\n");
}

static bn_vocab *make_vocab(const char *tok_json, uint32_t n_vocab, bn_error *err)
{
    bn_vocab *v = NULL;
    if (!tok_json) return bn_vocab_builtin(n_vocab, err);
    if (bn_vocab_load_hf(tok_json, NULL, &v, err) != 0) return NULL;
    if (v->n_tokens > n_vocab) {
        bn_err(err, "%s has %u tokens, more than the shape's n_vocab %u", tok_json, v->n_tokens, n_vocab);
        bn_vocab_free(v);
        return NULL;
    }
    return v;
}

static int write_format(const char *fmt, const bn_synth *sy, const bn_vocab *v, const char *out,
                        const bn_pack_opts *po, bn_error *err)
{
    if (!strcmp(fmt, "packed")) {
        bn_source *src;
        if (bn_source_open_synth(sy, v, &src, err) != 0) return -1;
        int rc = bn_pack_write(src, out, po, err);
        bn_source_close(src);
        return rc;
    }
    if (!strcmp(fmt, "hf")) return bn_hf_write_synth(sy, v, out, 0, 1, err);
    if (!strcmp(fmt, "hf-bf16")) return bn_hf_write_synth(sy, v, out, 1, 1, err);
    if (!strcmp(fmt, "hf-sharded")) return bn_hf_write_synth(sy, v, out, 0, 3, err);
    if (!strcmp(fmt, "gguf-i2_s")) return bn_gguf_write_synth(sy, v, out, 36, err);
    if (!strcmp(fmt, "gguf-tq2_0")) return bn_gguf_write_synth(sy, v, out, 35, err);
    if (!strcmp(fmt, "gguf-f16")) return bn_gguf_write_synth(sy, v, out, 1, err);
    return bn_err(err, "unknown format '%s'", fmt);
}

int cmd_mkmodel(int argc, char **argv)
{
    static const struct option opts[] = {{"format", required_argument, 0, 'f'}, {"seed", required_argument, 0, 's'},
                                         {"tokenizer", required_argument, 0, 't'}, BN_PACK_LONGOPTS,
                                         {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *fmt = "packed", *tok = NULL;
    bn_synth sy = {.seed = 1};
    bn_pack_opts po;
    bn_pack_opts_default(&po);
    int c;
    while ((c = getopt_long(argc, argv, "f:s:t:h", opts, NULL)) != -1) {
        int r = bn_pack_opt(c, optarg, &po);
        if (r == 1) continue;
        if (r < 0) {
            usage(stderr);
            return 2;
        }
        switch (c) {
        case 'f': fmt = optarg; break;
        case 's': sy.seed = strtoull(optarg, NULL, 0); break;
        case 't': tok = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (argc - optind != 2) {
        usage(stderr);
        return 2;
    }
    bn_error err = {{0}};
    bn_vocab *v = NULL;
    double t0 = bn_now();
    int rc = bn_synth_shape(argv[optind], &sy.cfg, &err);
    if (rc == 0 && !(v = make_vocab(tok, sy.cfg.n_vocab, &err))) rc = -1;
    if (rc == 0) {
        sy.cfg.bos = v->bos;
        sy.cfg.eos = v->eos;
        sy.cfg.eot = v->eot;
        rc = write_format(fmt, &sy, v, argv[optind + 1], &po, &err);
    }
    bn_vocab_free(v);
    if (rc != 0) {
        fprintf(stderr, "bitnet mkmodel: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "wrote %s (%s, shape %s, seed %llu) in %.2f s, peak RSS %.1f MiB\n", argv[optind + 1], fmt,
            argv[optind], (unsigned long long)sy.seed, bn_now() - t0, bn_peak_rss_mib());
    return 0;
}
