/* Encode speed: ~1 MB of English prose through the Llama-3 tokenizer on one core, in MB/s.
 *
 *   bench/bench_tokenize [tokenizer.json] [megabytes]
 *
 * tokenizer.json defaults to $BN_FIXTURES_DIR/tokenizer/llama3-tokenizer.json (then
 * ../shared/fixtures/...). The prose is generated from a fixed seed: sentences of words drawn
 * from a list of ~500 English words with Zipf-like frequencies, capitalisation, punctuation,
 * numbers and paragraph breaks, so the text is varied rather than one passage repeated. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "text/tokenizer.h"

static const char *const words[] = {
    "the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "I", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there", "been",
    "if", "more", "when", "will", "would", "who", "so", "no", "she", "other", "its", "may", "these",
    "what", "them", "than", "some", "him", "time", "into", "only", "do", "could", "new", "about",
    "two", "first", "after", "also", "made", "like", "over", "such", "people", "how", "most", "any",
    "my", "our", "out", "up", "said", "me", "your", "years", "many", "where", "between", "under",
    "through", "government", "during", "world", "system", "should", "because", "each", "those",
    "before", "while", "state", "however", "work", "life", "own", "being", "without", "both",
    "development", "against", "number", "part", "country", "again", "water", "city", "history",
    "information", "example", "family", "research", "language", "question", "important", "problem",
    "according", "although", "available", "beautiful", "behaviour", "believe", "building", "business",
    "century", "certainly", "character", "children", "community", "complete", "condition", "consider",
    "continued", "council", "daughter", "decision", "democratic", "described", "different",
    "difficult", "direction", "discovered", "economic", "education", "electric", "employment",
    "engineering", "environment", "especially", "everything", "evidence", "experience", "experiment",
    "explained", "factory", "following", "foreign", "forest", "fortune", "garden", "generation",
    "geography", "happened", "hospital", "husband", "identity", "imagination", "immediately",
    "independent", "industry", "influence", "instrument", "interest", "journey", "knowledge",
    "landscape", "literature", "machine", "majority", "material", "meanwhile", "memory", "message",
    "minister", "mountain", "movement", "museum", "musical", "national", "natural", "neighbour",
    "newspaper", "northern", "observed", "officer", "operation", "opinion", "organisation", "painting",
    "particular", "performance", "philosophy", "physical", "political", "population", "position",
    "possible", "practical", "president", "pressure", "probably", "production", "professor",
    "programme", "property", "published", "quality", "railway", "reasonable", "received", "religious",
    "remember", "republic", "response", "revolution", "scientific", "secretary", "sentence", "similar",
    "society", "soldiers", "southern", "specific", "statement", "strength", "structure", "students",
    "successful", "suddenly", "surface", "telephone", "television", "territory", "thousand",
    "together", "tradition", "treatment", "understand", "university", "valley", "village", "violence",
    "whatever", "wonderful", "yesterday", "ancient", "autumn", "bridge", "careful", "castle", "chapter",
    "climate", "coffee", "colour", "courage", "crystal", "dangerous", "delicate", "desert", "diamond",
    "distance", "dragon", "elephant", "emperor", "enormous", "festival", "flavour", "frozen", "gentle",
    "glacier", "harbour", "harvest", "horizon", "island", "jungle", "kingdom", "lantern", "library",
    "lighthouse", "magnetic", "marble", "meadow", "midnight", "mirror", "mystery", "narrow", "ocean",
    "orchestra", "palace", "parliament", "passenger", "pattern", "peaceful", "planet", "poetry",
    "quantum", "quiet", "rainbow", "recipe", "river", "satellite", "shadow", "silver", "spectrum",
    "storm", "summer", "thunder", "tomorrow", "tower", "tunnel", "universe", "vessel", "volcano",
    "wander", "whisper", "winter", "wisdom", "yellow", "zebra", "algorithm", "tokenizer", "inference",
    "ternary", "weights", "server", "latency", "throughput", "kernel", "memory", "processor",
    "don't", "it's", "we're", "they've", "I'm", "you'll", "he'd", "can't", "won't", "isn't",
};

static uint64_t state = 0x2545f4914f6cdd1dull;
static uint32_t rnd(uint32_t n)
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return (uint32_t)(state % n);
}

/* Zipf-like: small indices much more often. */
static const char *pick_word(void)
{
    size_t n = sizeof words / sizeof words[0];
    uint32_t a = rnd((uint32_t)n), b = rnd((uint32_t)n);
    return words[(a * (uint64_t)b) / n];
}

static char *make_prose(size_t target, size_t *len)
{
    char *buf = malloc(target + 256);
    size_t o = 0;
    int sentence_start = 1, line_start = 1;
    while (o < target) {
        const char *w = pick_word();
        char tmp[64];
        if (rnd(40) == 0) {
            snprintf(tmp, sizeof tmp, "%u", rnd(100000));
            w = tmp;
        }
        if (!line_start) buf[o++] = ' ';
        size_t wl = strlen(w);
        memcpy(buf + o, w, wl);
        if (sentence_start && buf[o] >= 'a' && buf[o] <= 'z') buf[o] -= 32;
        o += wl;
        sentence_start = line_start = 0;
        uint32_t r = rnd(100);
        if (r < 7) {
            buf[o++] = ",;:"[rnd(3)];
        } else if (r < 14) {
            buf[o++] = rnd(10) < 8 ? '.' : "?!"[rnd(2)];
            sentence_start = 1;
            if (rnd(8) == 0) {   /* paragraph break */
                buf[o++] = '\n';
                buf[o++] = '\n';
                line_start = 1;
            }
        }
    }
    *len = o;
    return buf;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    char path[4096];
    const char *dir = getenv("BN_FIXTURES_DIR");
    if (argc > 1) snprintf(path, sizeof path, "%s", argv[1]);
    else snprintf(path, sizeof path, "%s/tokenizer/llama3-tokenizer.json", dir && *dir ? dir : "../shared/fixtures");
    double mb = argc > 2 ? atof(argv[2]) : 1.0;
    bn_error err;
    bn_vocab *v;
    double t0 = now();
    if (bn_vocab_load_hf(path, NULL, &v, &err)) {
        fprintf(stderr, "bench_tokenize: %s\n", err.msg);
        return 1;
    }
    bn_tokenizer *tk = bn_tokenizer_new(v, &err);
    if (!tk) {
        fprintf(stderr, "bench_tokenize: %s\n", err.msg);
        return 1;
    }
    double t_load = now() - t0;
    size_t len;
    char *text = make_prose((size_t)(mb * 1e6), &len);
    int32_t *ids = NULL;
    size_t n = 0;
    double best = 1e9;
    for (int rep = 0; rep < 5; rep++) {   /* best of 5: the machine's noise, not our speed */
        free(ids);
        t0 = now();
        if (bn_tokenize(tk, text, len, &ids, &n, &err)) {
            fprintf(stderr, "bench_tokenize: %s\n", err.msg);
            return 1;
        }
        double t = now() - t0;
        if (t < best) best = t;
    }
    printf("load %.3f s; encoded %zu bytes of prose into %zu tokens (%.2f bytes/token)\n", t_load, len, n,
           (double)len / (double)n);
    printf("encode: %.1f MB/s (best of 5, one core)\n", (double)len / best / 1e6);
    free(ids);
    free(text);
    bn_tokenizer_free(tk);
    bn_vocab_free(v);
    return 0;
}
