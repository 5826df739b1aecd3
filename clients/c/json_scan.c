/*
 * json_scan.c - a minimal, strict JSON scanner for segstream wire headers.
 * See json_scan.h for the interface and its documented limits.
 */
#include "json_scan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Scanner state: the document bounds and the first error seen. */
struct scan {
    const char *start;
    const char *end;
    const char *why;
    const char *where;
};

static const char *scan_value(struct scan *s, const char *p, int depth, struct json_span *out);

static const char *fail_at(struct scan *s, const char *p, const char *why)
{
    if (s->why == NULL) {
        s->why = why;
        s->where = p;
    }
    return NULL;
}

static const char *skip_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static int is_digit(const char *p, const char *e)
{
    return p < e && *p >= '0' && *p <= '9';
}

static int hex4(const char *p, const char *e, unsigned *out)
{
    unsigned v = 0;
    if (e - p < 4)
        return -1;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* Append one byte to out (when given), always counting it in *n; cap includes the NUL. */
static void emit(char *out, size_t cap, size_t *n, unsigned char c)
{
    if (out != NULL && *n + 1 < cap)
        out[*n] = (char)c;
    (*n)++;
}

static void emit_utf8(char *out, size_t cap, size_t *n, unsigned cp)
{
    if (cp < 0x80) {
        emit(out, cap, n, (unsigned char)cp);
    } else if (cp < 0x800) {
        emit(out, cap, n, (unsigned char)(0xC0 | (cp >> 6)));
        emit(out, cap, n, (unsigned char)(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        emit(out, cap, n, (unsigned char)(0xE0 | (cp >> 12)));
        emit(out, cap, n, (unsigned char)(0x80 | ((cp >> 6) & 0x3F)));
        emit(out, cap, n, (unsigned char)(0x80 | (cp & 0x3F)));
    } else {
        emit(out, cap, n, (unsigned char)(0xF0 | (cp >> 18)));
        emit(out, cap, n, (unsigned char)(0x80 | ((cp >> 12) & 0x3F)));
        emit(out, cap, n, (unsigned char)(0x80 | ((cp >> 6) & 0x3F)));
        emit(out, cap, n, (unsigned char)(0x80 | (cp & 0x3F)));
    }
}

/* Walk the string starting at the opening quote p: validate it and, when out is given,
 * decode it (see emit). *need gets the decoded length. Returns the byte after the
 * closing quote, or NULL. */
static const char *string_walk(struct scan *s, const char *p, char *out, size_t cap,
                               size_t *need)
{
    const char *e = s->end;
    size_t n = 0;
    p++;
    for (;;) {
        unsigned cp;
        if (p >= e)
            return fail_at(s, p, "unterminated string");
        unsigned char c = (unsigned char)*p;
        if (c == '"')
            break;
        if (c < 0x20)
            return fail_at(s, p, "control character inside a string");
        if (c != '\\') {
            emit(out, cap, &n, c);
            p++;
            continue;
        }
        if (e - p < 2)
            return fail_at(s, p, "unterminated string");
        char esc = p[1];
        p += 2;
        switch (esc) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u': {
            unsigned lo;
            if (hex4(p, e, &cp) != 0)
                return fail_at(s, p, "bad \\u escape (4 hex digits expected)");
            p += 4;
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                return fail_at(s, p - 6, "lone UTF-16 surrogate in a \\u escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (e - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, e, &lo) != 0
                    || lo < 0xDC00 || lo > 0xDFFF)
                    return fail_at(s, p - 6, "lone UTF-16 surrogate in a \\u escape");
                p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            break;
        }
        default:
            return fail_at(s, p - 1, "unknown escape in a string");
        }
        emit_utf8(out, cap, &n, cp);
    }
    if (need != NULL)
        *need = n;
    if (out != NULL && cap > 0)
        out[n < cap ? n : cap - 1] = '\0';
    return p + 1;
}

static const char *scan_number(struct scan *s, const char *p)
{
    const char *e = s->end;
    if (p < e && *p == '-')
        p++;
    if (!is_digit(p, e))
        return fail_at(s, p, "malformed number");
    if (*p == '0')
        p++;
    else
        while (is_digit(p, e))
            p++;
    if (p < e && *p == '.') {
        p++;
        if (!is_digit(p, e))
            return fail_at(s, p, "malformed number (digit expected after '.')");
        while (is_digit(p, e))
            p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-'))
            p++;
        if (!is_digit(p, e))
            return fail_at(s, p, "malformed number (digit expected in exponent)");
        while (is_digit(p, e))
            p++;
    }
    return p;
}

static const char *scan_literal(struct scan *s, const char *p, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(s->end - p) < n || memcmp(p, word, n) != 0)
        return fail_at(s, p, "unexpected character");
    return p + n;
}

/* Members of an object (close = '}') or elements of an array (close = ']'). */
static const char *scan_container(struct scan *s, const char *p, int depth, char close)
{
    const char *e = s->end;
    if (depth >= JSON_MAX_DEPTH)
        return fail_at(s, p, "nested too deeply");
    p = skip_ws(p + 1, e);
    if (p < e && *p == close)
        return p + 1;
    for (;;) {
        if (close == '}') {
            if (p >= e || *p != '"')
                return fail_at(s, p, "object key (a string) expected");
            if ((p = string_walk(s, p, NULL, 0, NULL)) == NULL)
                return NULL;
            p = skip_ws(p, e);
            if (p >= e || *p != ':')
                return fail_at(s, p, "':' expected after an object key");
            p = skip_ws(p + 1, e);
        }
        if ((p = scan_value(s, p, depth + 1, NULL)) == NULL)
            return NULL;
        p = skip_ws(p, e);
        if (p < e && *p == ',') {
            p = skip_ws(p + 1, e);
            continue;
        }
        if (p < e && *p == close)
            return p + 1;
        return fail_at(s, p, close == '}' ? "',' or '}' expected" : "',' or ']' expected");
    }
}

static const char *scan_value(struct scan *s, const char *p, int depth, struct json_span *out)
{
    const char *q;
    enum json_kind kind;
    if (p >= s->end)
        return fail_at(s, p, "unexpected end of input");
    switch (*p) {
    case '{': kind = JSON_OBJECT; q = scan_container(s, p, depth, '}'); break;
    case '[': kind = JSON_ARRAY; q = scan_container(s, p, depth, ']'); break;
    case '"': kind = JSON_STRING; q = string_walk(s, p, NULL, 0, NULL); break;
    case 't': kind = JSON_TRUE; q = scan_literal(s, p, "true"); break;
    case 'f': kind = JSON_FALSE; q = scan_literal(s, p, "false"); break;
    case 'n': kind = JSON_NULL; q = scan_literal(s, p, "null"); break;
    default:
        if (*p != '-' && (*p < '0' || *p > '9'))
            return fail_at(s, p, "unexpected character");
        kind = JSON_NUMBER;
        q = scan_number(s, p);
    }
    if (q != NULL && out != NULL) {
        out->begin = p;
        out->end = q;
        out->kind = kind;
    }
    return q;
}

int json_parse(const char *buf, size_t len, struct json_span *root, char *err, size_t errlen)
{
    struct scan s = {buf, buf + len, NULL, NULL};
    const char *p = scan_value(&s, skip_ws(buf, s.end), 0, root);
    if (p != NULL && skip_ws(p, s.end) != s.end)
        p = fail_at(&s, skip_ws(p, s.end), "trailing data after the JSON value");
    if (p == NULL) {
        snprintf(err, errlen, "%s at byte %zu", s.why, (size_t)(s.where - s.start));
        return -1;
    }
    return 0;
}

int json_object_get(struct json_span obj, const char *key, struct json_span *value)
{
    struct scan s = {obj.begin, obj.end, NULL, NULL};
    size_t key_len = strlen(key);
    int found = 0;
    if (obj.kind != JSON_OBJECT)
        return 0;
    const char *p = skip_ws(obj.begin + 1, obj.end);
    while (p != NULL && p < obj.end && *p == '"') {
        char name[64];
        size_t name_len = 0;
        struct json_span v;
        p = string_walk(&s, p, name, sizeof name, &name_len);
        if (p == NULL)
            break;
        p = skip_ws(skip_ws(p, obj.end) + 1, obj.end); /* past ':' */
        if ((p = scan_value(&s, p, 0, &v)) == NULL)
            break;
        if (name_len == key_len && name_len < sizeof name && memcmp(name, key, key_len) == 0) {
            if (found)
                return -1; /* parsers keep the first or the last: refuse, never guess */
            *value = v;
            found = 1;
        }
        p = skip_ws(p, obj.end);
        if (p < obj.end && *p == ',')
            p = skip_ws(p + 1, obj.end);
    }
    return found;
}

struct json_iter json_array_iter(struct json_span array)
{
    struct json_iter it = {array.end, array.end};
    if (array.kind == JSON_ARRAY)
        it.p = skip_ws(array.begin + 1, array.end);
    return it;
}

int json_array_next(struct json_iter *it, struct json_span *elem)
{
    struct scan s = {it->p, it->end, NULL, NULL};
    if (it->p >= it->end || *it->p == ']')
        return 0;
    const char *p = scan_value(&s, it->p, 0, elem);
    if (p == NULL) {
        it->p = it->end;
        return 0;
    }
    p = skip_ws(p, it->end);
    if (p < it->end && *p == ',')
        p = skip_ws(p + 1, it->end);
    it->p = p;
    return 1;
}

size_t json_array_len(struct json_span array)
{
    struct json_iter it = json_array_iter(array);
    struct json_span elem;
    size_t n = 0;
    while (json_array_next(&it, &elem))
        n++;
    return n;
}

enum json_int json_uint63(struct json_span v, int64_t *out)
{
    const char *p = v.begin;
    uint64_t acc = 0;
    int negative = 0;
    if (v.kind != JSON_NUMBER)
        return JSON_INT_NOT_INTEGER;
    for (const char *q = v.begin; q < v.end; q++)
        if (*q == '.' || *q == 'e' || *q == 'E')
            return JSON_INT_NOT_INTEGER;
    if (*p == '-') {
        negative = 1;
        p++;
    }
    for (; p < v.end; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (acc > ((uint64_t)INT64_MAX - d) / 10)
            return JSON_INT_RANGE;
        acc = acc * 10 + d;
    }
    if (negative && acc != 0)
        return JSON_INT_RANGE;
    *out = (int64_t)acc;
    return JSON_INT_OK;
}

int json_string_decode(struct json_span str, char *out, size_t cap, size_t *len)
{
    struct scan s = {str.begin, str.end, NULL, NULL};
    size_t need = 0;
    if (str.kind != JSON_STRING || cap == 0 || string_walk(&s, str.begin, out, cap, &need) == NULL)
        return -1;
    *len = need;
    return need < cap ? 0 : -1;
}

char *json_string_dup(struct json_span str, size_t *len)
{
    struct scan s = {str.begin, str.end, NULL, NULL};
    size_t need = 0;
    if (str.kind != JSON_STRING || string_walk(&s, str.begin, NULL, 0, &need) == NULL)
        return NULL;
    char *out = malloc(need + 1);
    if (out == NULL || json_string_decode(str, out, need + 1, len) != 0) {
        free(out);
        return NULL;
    }
    return out;
}

const char *json_kind_name(enum json_kind kind)
{
    switch (kind) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_NUMBER: return "number";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

int utf8_valid(const unsigned char *b, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = b[i];
        size_t extra;
        unsigned lo = 0x80, hi = 0xBF; /* allowed range of the first continuation byte */
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            extra = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            extra = 2;
            if (c == 0xE0)
                lo = 0xA0; /* no overlongs */
            if (c == 0xED)
                hi = 0x9F; /* no UTF-16 surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            extra = 3;
            if (c == 0xF0)
                lo = 0x90;
            if (c == 0xF4)
                hi = 0x8F; /* nothing above U+10FFFF */
        } else {
            return 0;
        }
        if (n - i <= extra || b[i + 1] < lo || b[i + 1] > hi)
            return 0;
        for (size_t k = 2; k <= extra; k++)
            if (b[i + k] < 0x80 || b[i + k] > 0xBF)
                return 0;
        i += extra + 1;
    }
    return 1;
}
