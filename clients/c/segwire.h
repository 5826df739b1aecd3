/*
 * segwire.h - validate, decode and print segstream wire messages (version 1).
 *
 * Socket-agnostic (like stream/wire.py): give it the frames of one multipart message
 * and it checks every decoding rule of docs/wire-format.md, decodes label maps (raw,
 * rle, zstd) and prints one line per message to stdout:
 *
 *   labels CAMERA SEQ H W ENCODING HISTOGRAM FNV1A64
 *       HISTOGRAM: id:count pairs of the class ids present, comma-separated, ascending
 *       FNV1A64:   16 hex digits, FNV-1a 64 over the decoded H*W bytes (row-major)
 *   class_table ID K NAME_0 ... NAME_K-1     (when a table with a new id arrives)
 *   event CAMERA STATE DETAIL                 (a camera changed state)
 *
 * Strings are printed as UTF-8 with bytes < 0x21, 0x7F and '\' written as \xHH
 * (DETAIL, the rest of its line, keeps its spaces).
 */
#ifndef SEGSTREAM_SEGWIRE_H
#define SEGSTREAM_SEGWIRE_H

#include <stddef.h>
#include <stdint.h>

#include <zstd.h>

#define SEGWIRE_VERSION 1
#define SEGWIRE_MAX_ID_CHARS 64                        /* camera / class-table ids */
#define SEGWIRE_ID_BYTES (4 * SEGWIRE_MAX_ID_CHARS + 1) /* the same in UTF-8, with NUL */
#define SEGWIRE_DEFAULT_MAX_PIXELS (8192LL * 8192LL)

/* One ZeroMQ frame of a message. */
struct segwire_frame {
    const void *data;
    size_t size;
};

/* Why a message was rejected. */
struct segwire_err {
    char msg[512];
};

/* Decoder state. Set the three configuration fields (or use segwire_init). */
struct segwire {
    const char *const *cameras; /* print only these cameras (exact match); NULL: all */
    int n_cameras;
    long long max_pixels;       /* largest H*W accepted */

    ZSTD_DCtx *dctx;
    uint8_t *map;               /* decode buffer for rle / zstd, grown as needed */
    size_t map_cap;
    char table_id[SEGWIRE_ID_BYTES]; /* id of the last class table printed */
    size_t table_id_len;
    long long maps, tables, events;  /* messages accepted (tables: also repeats) */
};

/* Returns 0, or -1 when out of memory. */
int segwire_init(struct segwire *w, const char *const *cameras, int n_cameras,
                 long long max_pixels);
void segwire_free(struct segwire *w);

/* Validate one message (all its frames) and print it, unless its camera is filtered
 * out. Returns 0 (printed or filtered) or -1 (rejected; e says why). */
int segwire_handle(struct segwire *w, const struct segwire_frame *frames, int nframes,
                   struct segwire_err *e);

/* 0 if s[0, n) is a valid camera id (1-64 printable characters, no spaces or '/'),
 * else -1 with the reason in e. */
int segwire_check_camera_id(const char *s, size_t n, struct segwire_err *e);

#endif /* SEGSTREAM_SEGWIRE_H */
