/*
 * segwire.c - validate, decode and print segstream wire messages (version 1.1; reads 1.0).
 * See segwire.h for the output format and docs/wire-format.md for the rules checked.
 * Headers are read by json_scan.c (see its documented limits).
 */
#define _POSIX_C_SOURCE 200809L

#include "segwire.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_scan.h"

#define MAX_HEADER_BYTES (1u << 20)
#define MAX_ID_CHARS SEGWIRE_MAX_ID_CHARS
#define ID_BYTES SEGWIRE_ID_BYTES
#define MAX_CLASSES 256
#define FNV_OFFSET UINT64_C(0xcbf29ce484222325)
#define FNV_PRIME UINT64_C(0x100000001b3)

enum kind { KIND_LABELS, KIND_CLASS_TABLE, KIND_EVENT };
static const char *const KIND_TYPE[] = {"labels", "class_table", "source_state"};
static const char *const KIND_TOPIC[] = {"seg/", "cls/", "evt/"};
enum encoding { ENC_RAW, ENC_RLE, ENC_ZSTD, ENC_COUNT };
static const char *const ENCODING_NAME[] = {"raw", "rle", "zstd"};

/* printf arguments for "%.*s": the JSON text of span v, at most max bytes of it. */
#define SHOWN(v, max) \
    ((v).end - (v).begin > (max) ? (max) : (int)((v).end - (v).begin)), (v).begin

/* The labels header fields this client uses (the others are validated only). */
struct labels {
    char camera[ID_BYTES];
    size_t camera_len;
    int64_t seq, h, w;
    int64_t minor; /* "v_minor", 0 when absent (1.0 publishers) */
    enum encoding enc;
};

__attribute__((format(printf, 2, 3)))
static int fail(struct segwire_err *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    /* One line of valid UTF-8 per reason, whatever was quoted (a quote cut at a byte
     * limit may end inside a UTF-8 sequence). */
    size_t n = strlen(e->msg);
    int utf8 = utf8_valid((const unsigned char *)e->msg, n);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)e->msg[i];
        if (c < 0x20 || (c >= 0x80 && !utf8))
            e->msg[i] = c < 0x20 ? ' ' : '?';
    }
    return -1;
}

/* Bytes < 0x21 (or < 0x20 with keep_space), 0x7F and '\' become \xHH; others pass. */
static void escape_into(char *dst, size_t cap, const void *src, size_t n, int keep_space)
{
    const unsigned char *s = src;
    size_t o = 0;
    for (size_t i = 0; i < n && o + 5 < cap; i++) {
        unsigned c = s[i];
        if (c < 0x20 || c == 0x7F || c == '\\' || (c == ' ' && !keep_space))
            o += (size_t)snprintf(dst + o, cap - o, "\\x%02x", c);
        else
            dst[o++] = (char)c;
    }
    dst[o] = '\0';
}

static void print_escaped(const char *s, size_t n, int keep_space)
{
    for (size_t i = 0; i < n; i++) {
        unsigned c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7F || c == '\\' || (c == ' ' && !keep_space))
            printf("\\x%02x", c);
        else
            putchar((int)c);
    }
}

/* ------------------------------------------------------------------ header fields */

static int member(struct json_span obj, const char *key, enum json_kind want, const char *where,
                  struct json_span *out, struct segwire_err *e)
{
    int found = json_object_get(obj, key, out);
    if (found < 0)
        return fail(e, "%s header repeats key '%s'", where, key);
    if (!found)
        return fail(e, "%s header is missing key '%s'", where, key);
    if (out->kind != want)
        return fail(e, "%s header key '%s' must be %s, got %s", where, key,
                    want == JSON_NUMBER ? "an integer" : json_kind_name(want),
                    json_kind_name(out->kind));
    return 0;
}

/* An integer in 0 .. 2^63-1. */
static int uint_member(struct json_span obj, const char *key, const char *where, int64_t *out,
                       struct segwire_err *e)
{
    struct json_span v;
    if (member(obj, key, JSON_NUMBER, where, &v, e) != 0)
        return -1;
    switch (json_uint63(v, out)) {
    case JSON_INT_OK: return 0;
    case JSON_INT_NOT_INTEGER:
        return fail(e, "%s header key '%s' must be an integer, got %.*s", where, key,
                    SHOWN(v, 40));
    case JSON_INT_RANGE: break;
    }
    return fail(e, "%s header key '%s' must be in 0..2^63-1, got %.*s", where, key,
                SHOWN(v, 40));
}

/* A string decoded into buf (at most cap-1 bytes, else an error naming the key). */
static int string_member(struct json_span obj, const char *key, const char *where, char *buf,
                         size_t cap, size_t *len, struct segwire_err *e)
{
    struct json_span v;
    if (member(obj, key, JSON_STRING, where, &v, e) != 0)
        return -1;
    if (json_string_decode(v, buf, cap, len) != 0)
        return fail(e, "%s header key '%s' is longer than %zu bytes", where, key, cap - 1);
    return 0;
}

/* [H, W], two integers >= 1 (each at most 2^63-1). */
static int size_pair(struct json_span v, const char *what, int64_t *h, int64_t *w,
                     struct segwire_err *e)
{
    struct json_iter it = json_array_iter(v);
    struct json_span a, b;
    if (v.kind != JSON_ARRAY || json_array_len(v) != 2 || !json_array_next(&it, &a)
        || !json_array_next(&it, &b) || json_uint63(a, h) != JSON_INT_OK
        || json_uint63(b, w) != JSON_INT_OK)
        return fail(e, "%s must be [H, W] integers, got %.*s", what, SHOWN(v, 60));
    if (*h < 1 || *w < 1)
        return fail(e, "%s must be positive, got %" PRId64 "x%" PRId64, what, *h, *w);
    return 0;
}

static size_t utf8_chars(const char *s, size_t n)
{
    size_t chars = 0;
    for (size_t i = 0; i < n; i++)
        chars += ((unsigned char)s[i] & 0xC0) != 0x80;
    return chars;
}

/* 1-64 printable ASCII characters (0x21-0x7E) other than '/' (wire 1.1 decoding rule). */
int segwire_check_camera_id(const char *s, size_t n, struct segwire_err *e)
{
    char shown[80];
    int ok = n >= 1 && n <= MAX_ID_CHARS;
    for (size_t i = 0; ok && i < n; i++) {
        unsigned c = (unsigned char)s[i];
        if (c < 0x21 || c > 0x7E || c == '/')
            ok = 0;
    }
    if (ok)
        return 0;
    escape_into(shown, sizeof shown, s, n, 0);
    return fail(e, "camera id '%s' is invalid: use 1-%d printable ASCII characters without "
                "spaces or '/', e.g. 'front-left'", shown, MAX_ID_CHARS);
}

static int parse_labels(struct json_span doc, long long max_pixels, struct labels *lab,
                        struct segwire_err *e)
{
    const char *w = "labels";
    char text[16];
    size_t len;
    struct json_span v;
    int64_t t;
    if (string_member(doc, "camera", w, lab->camera, sizeof lab->camera, &lab->camera_len, e)
        || segwire_check_camera_id(lab->camera, lab->camera_len, e)
        || member(doc, "shape", JSON_ARRAY, w, &v, e)
        || size_pair(v, "labels header 'shape'", &lab->h, &lab->w, e))
        return -1;
    if (lab->h > max_pixels || lab->w > max_pixels / lab->h)
        return fail(e, "label map %" PRId64 "x%" PRId64 " exceeds the limit of %lld pixels "
                    "(raise --max-pixels if this is intended)", lab->h, lab->w, max_pixels);
    if (member(doc, "dtype", JSON_STRING, w, &v, e) != 0)
        return -1;
    if (json_string_decode(v, text, sizeof text, &len) != 0 || strcmp(text, "uint8") != 0)
        return fail(e, "labels dtype %.*s is not supported (only \"uint8\")", SHOWN(v, 40));
    if (member(doc, "encoding", JSON_STRING, w, &v, e) != 0)
        return -1;
    lab->enc = ENC_COUNT;
    if (json_string_decode(v, text, sizeof text, &len) == 0)
        for (int i = 0; i < ENC_COUNT; i++)
            if (strcmp(text, ENCODING_NAME[i]) == 0)
                lab->enc = (enum encoding)i;
    if (lab->enc == ENC_COUNT)
        return fail(e, "unknown encoding %.*s; expected \"raw\", \"rle\" or \"zstd\"",
                    SHOWN(v, 40));
    int found = json_object_get(doc, "publisher", &v);
    if (found < 0)
        return fail(e, "labels header repeats key 'publisher'");
    if (found && v.kind != JSON_STRING)
        return fail(e, "labels header key 'publisher' must be string, got %s",
                    json_kind_name(v.kind));
    lab->minor = 0;
    if (json_object_get(doc, "v_minor", &v) != 0 /* -1: repeated, uint_member says so */
        && uint_member(doc, "v_minor", w, &lab->minor, e))
        return -1;
    return uint_member(doc, "seq", w, &lab->seq, e) || uint_member(doc, "t_capture_ns", w, &t, e)
           || uint_member(doc, "t_capture_mono_ns", w, &t, e)
           || uint_member(doc, "t_infer_ns", w, &t, e) || uint_member(doc, "t_publish_ns", w, &t, e)
           || member(doc, "class_table", JSON_STRING, w, &v, e)
           || uint_member(doc, "dropped", w, &t, e) ? -1 : 0;
}

/* Validates a class_table header; on success the caller may print it (id in id_buf). */
static int parse_class_table(struct json_span doc, char *id, size_t *id_len,
                             struct json_span *classes, struct segwire_err *e)
{
    const char *w = "class_table";
    struct json_span model, v, c;
    int64_t ih, iw;
    if (string_member(doc, "id", w, id, ID_BYTES, id_len, e) != 0)
        return -1;
    if (*id_len == 0 || utf8_chars(id, *id_len) > MAX_ID_CHARS || memchr(id, '/', *id_len))
        return fail(e, "class_table id must be 1-%d characters without '/'", MAX_ID_CHARS);
    if (member(doc, "classes", JSON_ARRAY, w, classes, e) != 0)
        return -1;
    size_t k = json_array_len(*classes);
    if (k < 1 || k > MAX_CLASSES)
        return fail(e, "class table must list 1..%d classes, got %zu", MAX_CLASSES, k);
    struct json_iter it = json_array_iter(*classes);
    for (int64_t i = 0; json_array_next(&it, &c); i++) {
        char where[48];
        int64_t cid;
        snprintf(where, sizeof where, "class_table classes[%" PRId64 "]", i);
        if (c.kind != JSON_OBJECT)
            return fail(e, "%s must be an object", where);
        if (uint_member(c, "id", where, &cid, e) || member(c, "name", JSON_STRING, where, &v, e)
            || member(c, "color", JSON_ARRAY, where, &v, e))
            return -1;
        if (cid != i)
            return fail(e, "%s has id %" PRId64 "; ids must be 0..K-1 in order", where, cid);
        struct json_iter ci = json_array_iter(v);
        struct json_span x;
        int ok = json_array_len(v) == 3;
        while (ok && json_array_next(&ci, &x)) {
            int64_t channel;
            ok = json_uint63(x, &channel) == JSON_INT_OK && channel <= 255;
        }
        if (!ok)
            return fail(e, "%s color must be [R, G, B] in 0..255, got %.*s", where,
                        SHOWN(v, 40));
    }
    return member(doc, "model", JSON_OBJECT, w, &model, e)
           || member(model, "name", JSON_STRING, "class_table model", &v, e)
           || member(model, "architecture", JSON_STRING, "class_table model", &v, e)
           || member(model, "input_size", JSON_ARRAY, "class_table model", &v, e)
           || size_pair(v, "class_table model 'input_size'", &ih, &iw, e) ? -1 : 0;
}

/* ------------------------------------------------------------------ payloads */

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int reserve(struct segwire *c, size_t size, struct segwire_err *e)
{
    if (size <= c->map_cap)
        return 0;
    uint8_t *grown = realloc(c->map, size);
    if (grown == NULL)
        return fail(e, "out of memory for a %zu-byte label map", size);
    c->map = grown;
    c->map_cap = size;
    return 0;
}

/* uint32 N, N uint32 run lengths (>= 1, sum H*W), N uint8 values; little-endian. */
static int rle_decode(struct segwire *c, const uint8_t *src, size_t n, size_t size,
                      struct segwire_err *e)
{
    if (n < 4)
        return fail(e, "rle payload of %zu bytes is shorter than its 4-byte run count", n);
    uint32_t runs = le32(src);
    if (runs < 1 || runs > size)
        return fail(e, "rle run count %" PRIu32 " is impossible for %zu pixels", runs, size);
    if ((uint64_t)n != 4 + 5 * (uint64_t)runs)
        return fail(e, "rle payload is %zu bytes but %" PRIu32 " runs need %" PRIu64, n, runs,
                    4 + 5 * (uint64_t)runs);
    const uint8_t *lengths = src + 4, *values = src + 4 + 4 * (size_t)runs;
    uint64_t total = 0;
    for (uint32_t i = 0; i < runs; i++) {
        uint32_t len = le32(lengths + 4 * (size_t)i);
        if (len == 0)
            return fail(e, "rle run %" PRIu32 " has length 0", i);
        total += len;
    }
    if (total != size)
        return fail(e, "rle runs cover %" PRIu64 " pixels, shape needs %zu", total, size);
    if (reserve(c, size, e) != 0)
        return -1;
    for (size_t i = 0, pos = 0; i < runs; i++) {
        uint32_t len = le32(lengths + 4 * i);
        memset(c->map + pos, values[i], len);
        pos += len;
    }
    return 0;
}

/* Exactly one zstd frame declaring Frame_Content_Size = H*W; nothing after it; with a
 * content checksum when require_checksum (wire 1.1). A checksum present is verified by
 * ZSTD_decompressDCtx, so a corrupted payload is an error, not a wrong map. */
static int zstd_decode(struct segwire *c, const uint8_t *src, size_t n, size_t size,
                       int require_checksum, struct segwire_err *e)
{
    unsigned long long declared = ZSTD_getFrameContentSize(src, n);
    if (declared == ZSTD_CONTENTSIZE_ERROR)
        return fail(e, "zstd payload is corrupt: no zstd frame header in %zu bytes", n);
    if (declared == ZSTD_CONTENTSIZE_UNKNOWN)
        return fail(e, "zstd frame declares no content size; shape needs exactly %zu bytes", size);
    if (declared != size)
        return fail(e, "zstd frame declares content size %llu; shape needs exactly %zu bytes",
                    declared, size);
    size_t frame = ZSTD_findFrameCompressedSize(src, n);
    if (ZSTD_isError(frame))
        return fail(e, "zstd payload is corrupt: %s", ZSTD_getErrorName(frame));
    if (frame != n)
        return fail(e, "zstd payload has %zu bytes after its frame", n - frame);
    /* Frame_Header_Descriptor follows the 4-byte magic; bit 2: Content_Checksum_flag. */
    if (require_checksum && (n < 5 || !(src[4] & 0x04)))
        return fail(e, "zstd frame has no content checksum; wire format 1.1 requires one");
    if (reserve(c, size, e) != 0)
        return -1;
    size_t got = ZSTD_decompressDCtx(c->dctx, c->map, size, src, n);
    if (ZSTD_isError(got))
        return fail(e, "zstd payload is corrupt: %s", ZSTD_getErrorName(got));
    if (got != size)
        return fail(e, "zstd payload decompressed to %zu bytes, shape needs %zu", got, size);
    return 0;
}

/* The decoded (H, W) uint8 map, row-major: the payload itself (raw) or c->map. */
static const uint8_t *decode_payload(struct segwire *c, const struct labels *lab,
                                     const uint8_t *src, size_t n, struct segwire_err *e)
{
    size_t size = (size_t)lab->h * (size_t)lab->w;
    switch (lab->enc) {
    case ENC_RAW:
        if (n != size) {
            fail(e, "raw payload is %zu bytes, shape %" PRId64 "x%" PRId64 " needs %zu", n,
                 lab->h, lab->w, size);
            return NULL;
        }
        return src;
    case ENC_RLE:
        return rle_decode(c, src, n, size, e) == 0 ? c->map : NULL;
    case ENC_ZSTD:
        return zstd_decode(c, src, n, size, lab->minor >= 1, e) == 0 ? c->map : NULL;
    case ENC_COUNT:
        break;
    }
    fail(e, "unknown encoding");
    return NULL;
}

/* ------------------------------------------------------------------ printing */

static void print_labels(const struct labels *lab, const uint8_t *map)
{
    size_t size = (size_t)lab->h * (size_t)lab->w;
    uint64_t hist[256] = {0}, fnv = FNV_OFFSET;
    for (size_t i = 0; i < size; i++) {
        hist[map[i]]++;
        fnv = (fnv ^ map[i]) * FNV_PRIME;
    }
    printf("labels ");
    print_escaped(lab->camera, lab->camera_len, 0);
    printf(" %" PRId64 " %" PRId64 " %" PRId64 " %s ", lab->seq, lab->h, lab->w,
           ENCODING_NAME[lab->enc]);
    const char *sep = "";
    for (int v = 0; v < 256; v++)
        if (hist[v] != 0) {
            printf("%s%d:%" PRIu64, sep, v, hist[v]);
            sep = ",";
        }
    printf(" %016" PRIx64 "\n", fnv);
}

static int print_class_table(const char *id, size_t id_len, struct json_span classes,
                             struct segwire_err *e)
{
    struct json_iter it = json_array_iter(classes);
    struct json_span c, name;
    printf("class_table ");
    print_escaped(id, id_len, 0);
    printf(" %zu", json_array_len(classes));
    while (json_array_next(&it, &c)) {
        size_t len;
        char *text;
        if (json_object_get(c, "name", &name) != 1 || (text = json_string_dup(name, &len)) == NULL)
            return fail(e, "out of memory decoding a class name");
        putchar(' ');
        print_escaped(text, len, 0);
        free(text);
    }
    putchar('\n');
    return 0;
}

/* Validates a source_state header: camera id (into camera), state, detail, t_ns. */
static int parse_event(struct json_span doc, char *camera, size_t *camera_len,
                       struct json_span *state, struct json_span *detail, struct segwire_err *e)
{
    const char *w = "source_state";
    int64_t t_ns;
    if (string_member(doc, "camera", w, camera, ID_BYTES, camera_len, e)
        || segwire_check_camera_id(camera, *camera_len, e)
        || member(doc, "state", JSON_STRING, w, state, e)
        || member(doc, "detail", JSON_STRING, w, detail, e)
        || uint_member(doc, "t_ns", w, &t_ns, e))
        return -1;
    if (state->end - state->begin == 2) /* "": every escape decodes to >= 1 byte */
        return fail(e, "source_state header key 'state' must not be empty");
    return 0;
}

static int print_event(const char *camera, size_t camera_len, struct json_span state,
                       struct json_span detail, struct segwire_err *e)
{
    size_t state_len, detail_len;
    char *s = json_string_dup(state, &state_len), *d = json_string_dup(detail, &detail_len);
    int rc = 0;
    if (s == NULL || d == NULL) {
        rc = fail(e, "out of memory decoding an event");
    } else {
        printf("event ");
        print_escaped(camera, camera_len, 0);
        putchar(' ');
        print_escaped(s, state_len, 0);
        putchar(' ');
        print_escaped(d, detail_len, 1);
        putchar('\n');
    }
    free(s);
    free(d);
    return rc;
}

/* ------------------------------------------------------------------ messages */

static int camera_wanted(const struct segwire *c, const char *camera, size_t len)
{
    if (c->cameras == NULL || c->n_cameras == 0)
        return 1;
    for (int i = 0; i < c->n_cameras; i++)
        if (strlen(c->cameras[i]) == len && memcmp(c->cameras[i], camera, len) == 0)
            return 1;
    return 0;
}

/* Topic must be exactly prefix + name (name: camera or class-table id). */
static int check_topic(const char *topic, size_t topic_len, enum kind kind, const char *name,
                       size_t name_len, struct segwire_err *e)
{
    char shown[80];
    if (topic_len == 4 + name_len && memcmp(topic + 4, name, name_len) == 0)
        return 0;
    escape_into(shown, sizeof shown, topic, topic_len, 0);
    return fail(e, "topic '%s' does not match the header (expected %s + the header's %s)",
                shown, KIND_TOPIC[kind], kind == KIND_CLASS_TABLE ? "id" : "camera");
}

int segwire_handle(struct segwire *c, const struct segwire_frame *parts, int nparts,
                   struct segwire_err *e)
{
    char shown[80], id[ID_BYTES];
    if (nparts != 3)
        return fail(e, "expected 3 message frames (topic, header, payload), got %d", nparts);
    const char *topic = parts[0].data, *hdr = parts[1].data;
    size_t topic_len = parts[0].size, hdr_len = parts[1].size;
    const uint8_t *payload = parts[2].data;
    size_t payload_len = parts[2].size;
    int kind = -1;
    for (int k = 0; k < 3; k++)
        if (topic_len >= 4 && memcmp(topic, KIND_TOPIC[k], 4) == 0)
            kind = k;
    if (kind < 0) {
        escape_into(shown, sizeof shown, topic, topic_len < 40 ? topic_len : 40, 0);
        return fail(e, "unknown topic '%s': expected seg/, cls/ or evt/", shown);
    }
    if (!utf8_valid((const unsigned char *)topic, topic_len))
        return fail(e, "topic frame is not valid UTF-8");
    if (hdr_len > MAX_HEADER_BYTES)
        return fail(e, "header of %zu bytes exceeds the %u limit", hdr_len, MAX_HEADER_BYTES);
    struct json_span doc, v;
    char why[128], type[16];
    size_t len;
    int64_t version;
    if (!utf8_valid((const unsigned char *)hdr, hdr_len))
        return fail(e, "header is not UTF-8 JSON: invalid UTF-8");
    if (json_parse(hdr, hdr_len, &doc, why, sizeof why) != 0)
        return fail(e, "header is not UTF-8 JSON: %s", why);
    if (doc.kind != JSON_OBJECT)
        return fail(e, "header must be a JSON object, got %s", json_kind_name(doc.kind));
    if (member(doc, "v", JSON_NUMBER, KIND_TYPE[kind], &v, e) != 0)
        return -1;
    if (json_uint63(v, &version) != JSON_INT_OK || version != SEGWIRE_VERSION)
        return fail(e, "wire version %.*s is not supported: this client reads version %d; "
                    "upgrade the older side", SHOWN(v, 24), SEGWIRE_VERSION);
    if (member(doc, "type", JSON_STRING, KIND_TYPE[kind], &v, e) != 0)
        return -1;
    if (json_string_decode(v, type, sizeof type, &len) != 0 || strcmp(type, KIND_TYPE[kind]))
        return fail(e, "header type %.*s does not match topic prefix %s", SHOWN(v, 40),
                    KIND_TOPIC[kind]);
    if (kind != KIND_LABELS && payload_len != 0)
        return fail(e, "%s messages carry an empty payload, got %zu bytes", KIND_TYPE[kind],
                    payload_len);

    if (kind == KIND_CLASS_TABLE) {
        struct json_span classes;
        if (parse_class_table(doc, id, &len, &classes, e)
            || check_topic(topic, topic_len, kind, id, len, e))
            return -1;
        c->tables++;
        if (len == c->table_id_len && memcmp(id, c->table_id, len) == 0)
            return 0; /* repeated every 2 s and on every new subscription */
        memcpy(c->table_id, id, len);
        c->table_id_len = len;
        return print_class_table(id, len, classes, e);
    }
    if (kind == KIND_EVENT) {
        struct json_span state, detail;
        if (parse_event(doc, id, &len, &state, &detail, e)
            || check_topic(topic, topic_len, kind, id, len, e))
            return -1;
        if (!camera_wanted(c, id, len))
            return 0;
        if (print_event(id, len, state, detail, e) != 0)
            return -1;
        c->events++;
        return 0;
    }
    struct labels lab;
    if (parse_labels(doc, c->max_pixels, &lab, e)
        || check_topic(topic, topic_len, kind, lab.camera, lab.camera_len, e))
        return -1;
    if (!camera_wanted(c, lab.camera, lab.camera_len))
        return 0; /* seg/cam1 also matches seg/cam10 */
    const uint8_t *map = decode_payload(c, &lab, payload, payload_len, e);
    if (map == NULL)
        return -1;
    c->maps++;
    print_labels(&lab, map);
    return 0;
}

/* ------------------------------------------------------------------ lifetime */

int segwire_init(struct segwire *w, const char *const *cameras, int n_cameras,
                 long long max_pixels)
{
    memset(w, 0, sizeof *w);
    w->cameras = cameras;
    w->n_cameras = n_cameras;
    w->max_pixels = max_pixels;
    w->dctx = ZSTD_createDCtx();
    return w->dctx == NULL ? -1 : 0;
}

void segwire_free(struct segwire *w)
{
    ZSTD_freeDCtx(w->dctx);
    free(w->map);
    w->dctx = NULL;
    w->map = NULL;
    w->map_cap = 0;
}
