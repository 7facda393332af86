/* bitnet: the command-line tool. Dispatches `bitnet SUBCOMMAND ...` to src/cli/cmd_*.c. */
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "cli/commands.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} commands[] = {
    {"mkmodel", cmd_mkmodel, "write a deterministic synthetic model (any shape, any input format)"},
    {"convert", cmd_convert, "convert a HF directory or GGUF file into a packed model file"},
    {"inspect", cmd_inspect, "print a packed model's config, tokenizer and tensors (--verify: checksums)"},
    {"tokenize", cmd_tokenize, "encode text to token ids/pieces, or --decode ids"},
    {"run", cmd_run, "generate text from a prompt (or --chat)"},
    {"bench", cmd_bench, "prefill and decode speed, llama-bench style (--roofline)"},
    {"perplexity", cmd_perplexity, "perplexity over a text file (llama.cpp's method)"},
    {"loadtest", cmd_loadtest, "load-test an OpenAI-compatible server: TTFT, ITL, throughput, errors"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: bitnet COMMAND [ARGS...]   (bitnet COMMAND --help for details)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-11s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("%s\n", PACKAGE_STRING);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "bitnet: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
