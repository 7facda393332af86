/* bitnet convert: any HF directory or GGUF file -> one packed model file. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "model/source.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bitnet convert [options] SRC OUT\n"
            "  SRC  a Hugging Face directory (config.json + model.safetensors or a sharded index)\n"
            "       or a GGUF file (bitnet.cpp I2_S, llama.cpp TQ1_0/TQ2_0, F32/F16/BF16)\n"
            "  OUT  the packed model file to write (atomically)\n"
            "options:\n"
            "      --ternary t5|i2  ternary packing (default t5: 1.6 bits/weight)\n"
            "      --lm-head planes|i8|f16\n"
            "                       lm_head copies besides the f16 rows: the int8 per-row copy and\n"
            "                       its 2-bit planes (default planes), the int8 copy only, or none\n");
}

int cmd_convert(int argc, char **argv)
{
    static const struct option opts[] = {BN_PACK_LONGOPTS, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    bn_pack_opts po;
    bn_pack_opts_default(&po);
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        int r = bn_pack_opt(c, optarg, &po);
        if (r == 1) continue;
        if (c == 'h' && r == 0) {
            usage(stdout);
            return 0;
        }
        usage(stderr);
        return 2;
    }
    if (argc - optind != 2) {
        usage(stderr);
        return 2;
    }
    bn_error err = {{0}};
    bn_source *src = NULL;
    double t0 = bn_now();
    bn_cli_progress prog;
    int rc = bn_source_open(argv[optind], &src, &err);
    if (rc == 0) {
        fprintf(stderr, "converting %s (%s)\n", argv[optind], src->kind);
        if (src->notes) fprintf(stderr, "%s", src->notes);
        bn_cli_progress_attach(&prog, &po, stderr);   /* a progress line only on a terminal */
        rc = bn_pack_write(src, argv[optind + 1], &po, &err);
        bn_cli_progress_end(&prog);
    }
    bn_source_close(src);
    if (rc != 0) {
        fprintf(stderr, "bitnet convert: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "wrote %s in %.2f s, peak RSS %.1f MiB\n", argv[optind + 1], bn_now() - t0, bn_peak_rss_mib());
    return 0;
}
