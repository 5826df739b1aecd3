/*
 * json_scan.h - a minimal, strict JSON scanner for segstream wire headers.
 *
 * Not a general JSON library: it validates a whole document (RFC 8259 grammar) once,
 * then lets the caller look up object members, walk arrays, read non-negative 64-bit
 * integers and decode strings, all as spans into the caller's buffer (no tree, no
 * allocation except json_string_dup).
 *
 * Limits (all of them make the scanner reject, never misread):
 *   - nesting deeper than JSON_MAX_DEPTH objects/arrays is refused;
 *   - the input must already be valid UTF-8 (check it first; segstream writes ASCII);
 *   - \u escapes that form a lone UTF-16 surrogate are refused (Python would accept
 *     them in strings), as are NaN / Infinity (not JSON; Python's json accepts them);
 *   - integers are read only as 0 .. 2^63-1 (the wire format's range); numbers with a
 *     fraction or exponent are "not an integer", as in Python's json.
 * Duplicate object keys: json_object_get reports a key it finds twice (-1), since JSON
 * parsers disagree on which one counts; segstream's Python decoder refuses any repeat.
 */
#ifndef SEGSTREAM_JSON_SCAN_H
#define SEGSTREAM_JSON_SCAN_H

#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_DEPTH 64

enum json_kind { JSON_OBJECT, JSON_ARRAY, JSON_STRING, JSON_NUMBER, JSON_TRUE, JSON_FALSE,
                 JSON_NULL };

/* One value: bytes [begin, end) of the validated document, e.g. "\"abc\"" or "[1,2]". */
struct json_span {
    const char *begin;
    const char *end;
    enum json_kind kind;
};

/* Cursor over an array's elements (see json_array_next). */
struct json_iter {
    const char *p;
    const char *end;
};

enum json_int { JSON_INT_OK, JSON_INT_NOT_INTEGER, JSON_INT_RANGE };

/* Validate buf[0, len) as exactly one JSON value with optional surrounding whitespace.
 * Returns 0 and the root span, or -1 with a reason ("... at byte N") in err. */
int json_parse(const char *buf, size_t len, struct json_span *root, char *err, size_t errlen);

/* Member `key` of an object span (keys are compared after unescaping). Returns 1 and
 * the value, 0 when absent or obj is no object, -1 when the key appears more than once. */
int json_object_get(struct json_span obj, const char *key, struct json_span *value);

/* Number of elements of an array span (0 for anything else). */
size_t json_array_len(struct json_span array);

/* it = json_array_iter(a); while (json_array_next(&it, &elem)) { ... } */
struct json_iter json_array_iter(struct json_span array);
int json_array_next(struct json_iter *it, struct json_span *elem);

/* An integer in 0 .. 2^63-1 ("-0" reads as 0). NOT_INTEGER for other kinds, fractions
 * and exponents; RANGE for negative values and values above 2^63-1. */
enum json_int json_uint63(struct json_span v, int64_t *out);

/* Decode a string span to UTF-8 bytes in out (NUL-terminated; it may contain NULs from
 * \u0000, so use *len). Returns 0, or -1 when the result needs more than cap-1 bytes. */
int json_string_decode(struct json_span s, char *out, size_t cap, size_t *len);

/* Like json_string_decode into a malloc'd buffer the caller frees; NULL if out of memory. */
char *json_string_dup(struct json_span s, size_t *len);

/* "object", "array", "str", "int-or-float", "bool", "null": for error messages. */
const char *json_kind_name(enum json_kind kind);

/* 1 if buf[0, len) is valid UTF-8 (no overlongs, surrogates or code points > U+10FFFF). */
int utf8_valid(const unsigned char *buf, size_t len);

#endif /* SEGSTREAM_JSON_SCAN_H */
