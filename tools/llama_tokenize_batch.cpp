// Tokenizes many strings with llama.cpp's own tokenizer after one vocabulary load (the
// llama-tokenize binary reloads the vocabulary per call, ~0.7 s for a 150k vocabulary).
// Built and run by tools/make_tokenizer_vectors.py; not part of rfc.
//
// usage: llama_tokenize_batch MODEL.gguf [KEY=TYPE:VALUE ...] < records > lines
//   records: (uint32 little-endian byte length, UTF-8 bytes)*
//   lines:   one line of space-separated token ids per record (add_special = false,
//            parse_special = true: control tokens in the text match, as in llama-server)
//   KEY=TYPE:VALUE overrides GGUF metadata as llama-tokenize's --override-kv (str, int, bool).
//
// usage: llama_tokenize_batch --split 0|1 REGEX... < records > lines
//   llama.cpp's pre-tokenizer (unicode_regex_split, the regexes given in order, GPT-2 byte
//   encoding when 1): one line per record, each word as hex bytes, words separated by spaces.
#include "llama.h"
#include "unicode.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

static bool parse_override(const char * arg, llama_model_kv_override & kv) {
    const char * eq = strchr(arg, '=');
    if (!eq || eq - arg >= 128) return false;
    memset(&kv, 0, sizeof(kv));
    memcpy(kv.key, arg, eq - arg);
    const char * v = eq + 1;
    if (strncmp(v, "str:", 4) == 0 && strlen(v + 4) < 128) {
        kv.tag = LLAMA_KV_OVERRIDE_TYPE_STR;
        strcpy(kv.val_str, v + 4);
    } else if (strncmp(v, "int:", 4) == 0) {
        kv.tag = LLAMA_KV_OVERRIDE_TYPE_INT;
        kv.val_i64 = strtoll(v + 4, nullptr, 10);
    } else if (strncmp(v, "bool:", 5) == 0) {
        kv.tag = LLAMA_KV_OVERRIDE_TYPE_BOOL;
        kv.val_bool = strcmp(v + 5, "true") == 0;
    } else {
        return false;
    }
    return true;
}

static bool read_record(std::string & text) {
    uint32_t n;
    if (fread(&n, sizeof(n), 1, stdin) != 1) return false;
    text.assign(n, '\0');
    return n == 0 || fread(&text[0], 1, n, stdin) == n;
}

static int split_main(int argc, char ** argv) {
    const bool byte_encode = strcmp(argv[2], "1") == 0;
    std::vector<std::string> regexes(argv + 3, argv + argc);
    std::string text;
    while (read_record(text)) {
        const auto words = unicode_regex_split(text, regexes, byte_encode);
        for (size_t w = 0; w < words.size(); w++) {
            if (w) printf(" ");
            for (unsigned char c : words[w]) printf("%02x", c);
            if (words[w].empty()) printf("-");  // an empty word, as zero-width matches give
        }
        printf("\n");
        fflush(stdout);
    }
    return 0;
}

int main(int argc, char ** argv) {
    if (argc >= 3 && strcmp(argv[1], "--split") == 0) return split_main(argc, argv);
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf [KEY=TYPE:VALUE ...]\n", argv[0]);
        return 2;
    }
    std::vector<llama_model_kv_override> overrides;
    for (int i = 2; i < argc; i++) {
        llama_model_kv_override kv;
        if (!parse_override(argv[i], kv)) {
            fprintf(stderr, "bad override %s\n", argv[i]);
            return 2;
        }
        overrides.push_back(kv);
    }
    llama_model_kv_override end;
    memset(&end, 0, sizeof(end));
    overrides.push_back(end);  // an empty key ends the list

    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_backend_init();
    llama_model_params params = llama_model_default_params();
    params.vocab_only = true;
    params.kv_overrides = overrides.size() > 1 ? overrides.data() : nullptr;
    llama_model * model = llama_model_load_from_file(argv[1], params);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    uint32_t n;
    while (fread(&n, sizeof(n), 1, stdin) == 1) {
        std::string text(n, '\0');
        if (n && fread(&text[0], 1, n, stdin) != n) return 1;
        std::vector<llama_token> ids(text.size() + 16);
        int32_t got = llama_tokenize(vocab, text.data(), (int32_t) text.size(), ids.data(), (int32_t) ids.size(), false, true);
        if (got < 0) {
            ids.resize(-got);
            got = llama_tokenize(vocab, text.data(), (int32_t) text.size(), ids.data(), (int32_t) ids.size(), false, true);
        }
        for (int32_t i = 0; i < got; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
        fflush(stdout);
    }
    llama_model_free(model);
    return 0;
}
