/* bitnet inspect: what is in a packed model file; --verify reads every byte. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "model/model.h"
#include "text/tokenizer.h"

static const char *dtype_name(uint32_t dt)
{
    switch (dt) {
    case BN_DT_F32: return "f32";
    case BN_DT_F16: return "f16";
    case BN_DT_I8: return "i8";
    case BN_DT_TERN_I2: return "tern-i2";
    case BN_DT_TERN_T5: return "tern-t5";
    }
    return "?";
}

static void print_config(const bn_model *m)
{
    const bn_config *c = &m->cfg;
    printf("file:        %s (format %u.%u)\n", m->path, m->version_major, m->version_minor);
    printf("n_embd:      %u\nn_layer:     %u\nn_head:      %u\nn_head_kv:   %u\nhead_dim:    %u\n", c->n_embd,
           c->n_layer, c->n_head, c->n_head_kv, c->head_dim);
    printf("n_ff:        %u\nn_vocab:     %u\nn_ctx_max:   %u\nrope_theta:  %g\nnorm_eps:    %g\n", c->n_ff, c->n_vocab,
           c->n_ctx_max, c->rope_theta, c->norm_eps);
    printf("activation:  %s\ntied:        %s\nbos/eos/eot: %d / %d / %d\n", c->act == BN_ACT_RELU2 ? "relu2" : "silu",
           c->tied ? "yes" : "no", c->bos, c->eos, c->eot);
    printf("ternary:     %s\nlm_head:     %s\n", m->tern_fmt == BN_TERN_T5 ? "t5 (1.6 bits/weight)" : "i2 (2 bits/weight)",
           m->lm_head_planes ? "f16 + int8 per-row + int8 as 2-bit planes"
           : m->lm_head_i8   ? "f16 + int8 per-row"
                             : "f16");
}

static void print_tokenizer(const bn_vocab *v)
{
    uint32_t control = 0;
    for (uint32_t i = 0; i < v->n_tokens; i++) control += v->type[i] == BN_TOK_CONTROL;
    printf("tokenizer:   %u tokens (%u control), %u merges, pre-tokenizer %s, chat %s\n", v->n_tokens, control,
           v->n_merges, v->model == BN_TOKM_SPM ? "none (sentencepiece)"
           : v->pre == BN_PRE_LLAMA3 ? "llama3" : v->pre == BN_PRE_FALCON3 ? "falcon3" : "gpt2",
           bn_chat_kind_name((enum bn_chat_kind)v->chat));
}

int cmd_inspect(int argc, char **argv)
{
    static const struct option opts[] = {{"verify", no_argument, 0, 'v'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int verify = 0, c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'v') verify = 1;
        else {
            fprintf(c == 'h' ? stdout : stderr, "usage: bitnet inspect [--verify] MODEL\n");
            return c == 'h' ? 0 : 2;
        }
    }
    if (argc - optind != 1) {
        fprintf(stderr, "usage: bitnet inspect [--verify] MODEL\n");
        return 2;
    }
    bn_error err = {{0}};
    bn_model *m;
    if (bn_model_open(argv[optind], &m, &err) != 0) {
        fprintf(stderr, "bitnet inspect: %s\n", err.msg);
        return 1;
    }
    print_config(m);
    print_tokenizer(m->vocab);
    printf("provenance:\n");
    for (const char *line = m->source; *line;) {
        const char *end = strchr(line, '\n');
        int n = end ? (int)(end - line) : (int)strlen(line);
        printf("  %.*s\n", n, line);
        line += n + (end != NULL);
    }
    printf("\n%-28s %-8s %-16s %12s %12s %10s\n", "tensor", "type", "shape", "offset", "bytes", "scale");
    uint64_t total = 0;
    for (uint32_t i = 0; i < m->n_tensors; i++) {
        const bn_tensor *t = &m->tensors[i];
        char shape[40];
        snprintf(shape, sizeof shape, "%llux%llu", (unsigned long long)t->rows, (unsigned long long)t->cols);
        printf("%-28s %-8s %-16s %12llu %12llu %10.6g\n", t->name, dtype_name(t->dtype), shape,
               (unsigned long long)((const char *)t->data - (const char *)m->map), (unsigned long long)t->nbytes, t->scale);
        total += t->nbytes;
    }
    printf("%u tensors, %.1f MiB of tensor data\n", m->n_tensors, (double)total / 1048576.0);
    int rc = 0;
    if (verify) {
        double t0 = bn_now();
        rc = bn_model_verify(m, &err);
        if (rc == 0) printf("verify: OK (header and %u tensor checksums, %.2f s)\n", m->n_tensors, bn_now() - t0);
        else fprintf(stderr, "bitnet inspect: verify FAILED: %s\n", err.msg);
    }
    bn_model_close(m);
    return rc == 0 ? 0 : 1;
}
