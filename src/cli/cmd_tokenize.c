/* bitnet tokenize: encode text to token ids / pieces, or decode ids back to text, with a packed
 * model's tokenizer or a Hugging Face tokenizer.json. For people debugging prompts. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "model/model.h"
#include "text/tokenizer.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bitnet tokenize (-m MODEL | --tokenizer-json FILE) [options] [TEXT | -f FILE | -]\n"
            "       bitnet tokenize (-m MODEL | --tokenizer-json FILE) --decode IDS|-\n"
            "\n"
            "Encodes TEXT (or FILE, or stdin with '-') as raw text: no BOS, no chat template, and\n"
            "special-token strings such as <|eot_id|> are encoded as ordinary text.\n"
            "\n"
            "  -m, --model FILE          packed model whose tokenizer to use\n"
            "  -j, --tokenizer-json FILE a Hugging Face tokenizer.json instead of a model\n"
            "      --tokenizer-config F  its tokenizer_config.json (chat template, bos/eos)\n"
            "  -f, --file FILE           read the text from FILE\n"
            "      --ids                 print one id per line\n"
            "      --pieces              print 'ID<TAB>PIECE' per token; the piece is its bytes, with\n"
            "                            \\n \\r \\t \\\\ and non-UTF-8 bytes as \\xNN escapes\n"
            "                            (default output: the ids on one line, separated by spaces)\n"
            "      --bos                 prepend the BOS token\n"
            "      --chat                render TEXT as a user message in the model's chat template,\n"
            "                            with the generation prompt (BOS included)\n"
            "      --system TEXT         with --chat: a system message first\n"
            "      --chat-template NAME  with --chat: bitnet, llama3, falcon3 or none instead of the model's own\n"
            "      --special             match control-token strings in TEXT (trusted text only)\n"
            "      --decode IDS          decode ids (separated by commas, spaces or brackets; '-' reads\n"
            "                            them from stdin); writes the exact bytes, no newline added\n"
            "      --skip-control        with --decode: control tokens produce no text\n"
            "  -h, --help                this help\n");
}

/* Reads all of f into a malloc'd buffer. */
static char *read_all(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n - 1, f);
        if (ferror(f)) break;
        if (feof(f)) {
            buf[n] = 0;
            *len = n;
            return buf;
        }
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) break;
            buf = nb;
        }
    }
    free(buf);
    return NULL;
}

/* Writes a token's bytes readably: valid UTF-8 as is, the rest escaped. */
static void print_piece(const char *s, size_t len)
{
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)s[i];
        size_t n = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
        int ok = n && i + n <= len;
        for (size_t k = 1; ok && k < n; k++) ok = ((unsigned char)s[i + k] & 0xc0) == 0x80;
        if (!ok) {
            printf("\\x%02x", c);
            i++;
        } else if (c == '\n') { printf("\\n"); i++; }
        else if (c == '\r') { printf("\\r"); i++; }
        else if (c == '\t') { printf("\\t"); i++; }
        else if (c == '\\') { printf("\\\\"); i++; }
        else if (c < 0x20 || c == 0x7f) { printf("\\x%02x", c); i++; }
        else { fwrite(s + i, 1, n, stdout); i += n; }
    }
}

static int parse_ids(const char *s, bn_tokens *out, bn_error *err)
{
    while (*s) {
        if (strchr(" \t\r\n,[]", *s)) {
            s++;
            continue;
        }
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 0 || v > INT32_MAX) return bn_err(err, "--decode: '%.20s' is not a token id", s);
        if (bn_tokens_push(out, (int32_t)v, err)) return -1;
        s = end;
    }
    return 0;
}

typedef struct {
    const char *model, *tok_json, *tok_config, *file, *decode, *system, *chat_template, *text;
    int ids, pieces, bos, chat, special, skip_control;
} options;

static int parse_args(int argc, char **argv, options *o)
{
    enum { O_IDS = 256, O_PIECES, O_BOS, O_CHAT, O_SYSTEM, O_TEMPLATE, O_SPECIAL, O_DECODE, O_SKIP, O_CONFIG };
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'}, {"tokenizer-json", required_argument, 0, 'j'},
        {"tokenizer-config", required_argument, 0, O_CONFIG}, {"file", required_argument, 0, 'f'},
        {"ids", no_argument, 0, O_IDS}, {"pieces", no_argument, 0, O_PIECES}, {"bos", no_argument, 0, O_BOS},
        {"chat", no_argument, 0, O_CHAT}, {"system", required_argument, 0, O_SYSTEM},
        {"chat-template", required_argument, 0, O_TEMPLATE}, {"special", no_argument, 0, O_SPECIAL},
        {"decode", required_argument, 0, O_DECODE}, {"skip-control", no_argument, 0, O_SKIP},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:j:f:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': o->model = optarg; break;
        case 'j': o->tok_json = optarg; break;
        case O_CONFIG: o->tok_config = optarg; break;
        case 'f': o->file = optarg; break;
        case O_IDS: o->ids = 1; break;
        case O_PIECES: o->pieces = 1; break;
        case O_BOS: o->bos = 1; break;
        case O_CHAT: o->chat = 1; break;
        case O_SYSTEM: o->system = optarg; break;
        case O_TEMPLATE: o->chat_template = optarg; break;
        case O_SPECIAL: o->special = 1; break;
        case O_DECODE: o->decode = optarg; break;
        case O_SKIP: o->skip_control = 1; break;
        case 'h': usage(stdout); return 1;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) o->text = argv[optind++];
    const char *why = optind < argc ? "more than one TEXT argument (quote the text)"
                    : !o->model == !o->tok_json ? "give exactly one of -m MODEL and --tokenizer-json FILE"
                    : !o->decode && !o->text == !o->file ? "give the text: TEXT, -f FILE or - for stdin"
                    : o->ids && o->pieces ? "--ids and --pieces are exclusive"
                    : (o->system || o->chat_template) && !o->chat ? "--system and --chat-template need --chat"
                    : o->chat_template && bn_chat_kind_parse(o->chat_template) < 0 ? "--chat-template: bitnet, llama3, falcon3 or none"
                    : NULL;
    if (why) {
        fprintf(stderr, "bitnet tokenize: %s\n", why);
        usage(stderr);
        return 2;
    }
    return 0;
}

static int do_decode(const bn_tokenizer *tk, const options *o, bn_error *err)
{
    bn_tokens ids = {0};
    char *in = NULL, *text = NULL;
    size_t len;
    int rc = -1;
    const char *src = o->decode;
    if (!strcmp(src, "-")) {
        if (!(in = read_all(stdin, &len))) {
            bn_err(err, "cannot read ids from stdin");
            goto out;
        }
        src = in;
    }
    if (parse_ids(src, &ids, err) ||
        bn_detokenize(tk, ids.ids, ids.n, o->skip_control ? BN_DECODE_SKIP_CONTROL : 0, &text, &len, err))
        goto out;
    fwrite(text, 1, len, stdout);
    rc = 0;
out:
    free(in);
    free(text);
    bn_tokens_free(&ids);
    return rc;
}

static int do_encode(const bn_tokenizer *tk, const options *o, bn_error *err)
{
    char *text = NULL;
    size_t len = 0;
    bn_tokens ids = {0};
    int rc = -1;
    if (o->file || !strcmp(o->text, "-")) {
        FILE *f = o->file ? fopen(o->file, "rb") : stdin;
        if (!f) {
            bn_err(err, "%s: cannot open: %s", o->file, strerror(errno));
            goto out;
        }
        text = read_all(f, &len);
        if (f != stdin) fclose(f);
        if (!text) {
            bn_err(err, "%s: cannot read", o->file ? o->file : "stdin");
            goto out;
        }
    } else if (!(text = strdup(o->text))) {
        goto out;
    } else {
        len = strlen(text);
    }
    const bn_vocab *v = bn_tokenizer_vocab(tk);
    if (o->chat) {
        bn_chat_msg msgs[2] = {{"system", o->system}, {"user", text}};
        int kind = o->chat_template ? bn_chat_kind_parse(o->chat_template) : (int)bn_chat_kind_of_vocab(v);
        if (bn_chat_render(tk, (enum bn_chat_kind)kind, o->system ? msgs : msgs + 1, o->system ? 2 : 1, 1, &ids, err))
            goto out;
    } else {
        if (o->bos && v->bos >= 0 && bn_tokens_push(&ids, v->bos, err)) goto out;
        if (o->special ? bn_tokenize_special_append(tk, text, len, &ids, err) : bn_tokenize_append(tk, text, len, &ids, err))
            goto out;
    }
    for (size_t i = 0; i < ids.n; i++) {
        if (o->pieces) {
            size_t pl;
            const char *p = bn_token_bytes(tk, ids.ids[i], &pl);
            printf("%d\t", ids.ids[i]);
            print_piece(p, pl);
            putchar('\n');
        } else {
            printf(o->ids ? "%d\n" : i ? " %d" : "%d", ids.ids[i]);
        }
    }
    if (!o->ids && !o->pieces) putchar('\n');
    rc = 0;
out:
    free(text);
    bn_tokens_free(&ids);
    return rc;
}

int cmd_tokenize(int argc, char **argv)
{
    options o = {0};
    int r = parse_args(argc, argv, &o);
    if (r) return r == 1 ? 0 : r;
    bn_error err = {{0}};
    bn_model *m = NULL;
    bn_vocab *own = NULL;
    const bn_vocab *v;
    if (o.model) {
        if (bn_model_open(o.model, &m, &err)) goto fail;
        v = m->vocab;
    } else {
        if (bn_vocab_load_hf(o.tok_json, o.tok_config, &own, &err)) goto fail;
        v = own;
    }
    bn_tokenizer *tk = bn_tokenizer_new(v, &err);
    if (!tk) goto fail;
    r = o.decode ? do_decode(tk, &o, &err) : do_encode(tk, &o, &err);
    bn_tokenizer_free(tk);
    if (r) goto fail;
    bn_vocab_free(own);
    bn_model_close(m);
    return fflush(stdout) == 0 ? 0 : 1;
fail:
    fprintf(stderr, "bitnet tokenize: %s\n", err.msg[0] ? err.msg : "out of memory");
    bn_vocab_free(own);
    bn_model_close(m);
    return 1;
}
