/* Source detection and the fields every source shares. */
#include "model/source.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"

int bn_source_open(const char *path, bn_source **out, bn_error *err)
{
    *out = NULL;
    if (bn_is_dir(path)) return bn_source_open_hf(path, out, err);
    FILE *f = fopen(path, "rb");
    if (!f) return bn_err(err, "%s: cannot open", path);
    char magic[8] = {0};
    size_t n = fread(magic, 1, sizeof magic, f);
    fclose(f);
    if (n >= 4 && !memcmp(magic, "GGUF", 4)) return bn_source_open_gguf(path, out, err);
    if (n == 8 && !memcmp(magic, "BITNETPK", 8))
        return bn_err(err, "%s: already a packed bitnetd model (nothing to convert)", path);
    return bn_err(err, "%s: not a GGUF file nor a Hugging Face model directory (config.json + *.safetensors)", path);
}

void bn_source_close(bn_source *s)
{
    if (s) s->ops->close(s);
}

void bn_source_base_free(bn_source *s)
{
    bn_vocab_free(s->vocab);
    free(s->kind);
    free(s->path);
    free(s->notes);
    s->vocab = NULL;
    s->kind = s->path = s->notes = NULL;
}

void bn_source_note(bn_source *s, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    size_t old = s->notes ? strlen(s->notes) : 0;
    char *p = realloc(s->notes, old + strlen(line) + 2);
    if (!p) return; /* notes are informational: dropping one under OOM is acceptable */
    memcpy(p + old, line, strlen(line));
    p[old + strlen(line)] = '\n';
    p[old + strlen(line) + 1] = 0;
    s->notes = p;
}
