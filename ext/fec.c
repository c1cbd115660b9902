/* SMPTE 2022-1 FEC (RFC 2733 header with the 2022-1 extension) and SMPTE 2022-7 de-duplication.
 *
 * What is protected: everything after a media packet's 12-byte fixed RTP header (CSRCs, header
 * extension, payload, padding) plus its P, X, CC, M bits, payload type and timestamp, as RFC 2733
 * says. For packets without CSRCs, extension or padding this is byte for byte what GStreamer's
 * rtpst2022-1-fecenc/fecdec compute. The pure-Python twin is msm.rtp_proxy.repair.fec; the two
 * must stay identical (tests/unit/test_fec.py compares them on random streams).
 */
#include "fec.h"

#include <stdlib.h>
#include <string.h>

#define RTP_HEADER 12

/* ---- shared helpers ---------------------------------------------------------------------- */

static uint16_t rd16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static uint32_t rd32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static void wr16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void wr32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

/* GCC/clang vector extension: 16-byte XORs (SSE2 on x86-64, NEON on arm64) without intrinsics. */
typedef uint8_t v16 __attribute__((vector_size(16)));

static void xor_into(uint8_t *restrict dst, const uint8_t *restrict src, size_t n) {
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        v16 a, b, c, d;
        memcpy(&a, dst + i, 16); memcpy(&b, src + i, 16);
        memcpy(&c, dst + i + 16, 16); memcpy(&d, src + i + 16, 16);
        a ^= b; c ^= d;
        memcpy(dst + i, &a, 16); memcpy(dst + i + 16, &c, 16);
    }
    for (; i < n; i++) dst[i] ^= src[i];
}

/* 16-bit sequence number -> 64-bit one, the nearest to `near`. */
static int64_t extend(int64_t near, uint16_t seq) {
    int32_t delta = (int32_t)((uint16_t)(seq - (uint16_t)near));
    if (delta >= 0x8000) delta -= 0x10000;
    return near + delta;
}

static uint32_t pow2_at_least(uint32_t n) {
    uint32_t w = 16;
    while (w < n) w <<= 1;
    return w;
}

/* ---- encoder ----------------------------------------------------------------------------- */

typedef struct {
    uint32_t n;         /* packets summed */
    uint16_t snbase;
    uint16_t len_x;     /* XOR of the protected lengths */
    uint8_t b0_x, b1_x; /* XOR of the first two header bytes (P, X, CC; M, PT) */
    uint32_t ts_x;
    uint32_t plen;      /* longest protected length so far: the sum's size */
    uint8_t *sum;
} fec_acc;

struct msm_fec_enc {
    uint32_t columns, rows, max_packet, ssrc;
    int payload_type;
    int started;
    uint16_t last_seq, row_seq, col_seq;
    uint32_t pos;
    fec_acc row;
    fec_acc *cols;
    uint8_t *arena;
    msm_fec_enc_stats stats;
};

static void acc_add(fec_acc *a, const uint8_t *pkt, size_t len) {
    uint32_t body = (uint32_t)(len - RTP_HEADER);
    if (a->n == 0) {
        a->snbase = rd16(pkt + 2);
        a->len_x = (uint16_t)body;
        a->b0_x = pkt[0];
        a->b1_x = pkt[1];
        a->ts_x = rd32(pkt + 4);
        a->plen = body;
        memcpy(a->sum, pkt + RTP_HEADER, body);
    } else {
        if (body > a->plen) {
            memset(a->sum + a->plen, 0, body - a->plen);
            a->plen = body;
        }
        a->len_x ^= (uint16_t)body;
        a->b0_x ^= pkt[0];
        a->b1_x ^= pkt[1];
        a->ts_x ^= rd32(pkt + 4);
        xor_into(a->sum, pkt + RTP_HEADER, body);
    }
    a->n++;
}

msm_fec_enc *msm_fec_enc_new(uint32_t columns, uint32_t rows, uint32_t max_packet, int payload_type, uint32_t ssrc) {
    if (columns < 1 || columns > MSM_FEC_MAX_COLUMNS || rows > MSM_FEC_MAX_ROWS || max_packet < RTP_HEADER ||
        max_packet > MSM_FEC_MAX_PACKET || payload_type < 0 || payload_type > 127)
        return NULL;
    msm_fec_enc *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->columns = columns; e->rows = rows; e->max_packet = max_packet;
    e->payload_type = payload_type; e->ssrc = ssrc;
    e->cols = calloc(columns, sizeof *e->cols);
    e->arena = malloc((size_t)(columns + 1) * max_packet);
    if (!e->cols || !e->arena) { msm_fec_enc_free(e); return NULL; }
    e->row.sum = e->arena;
    for (uint32_t i = 0; i < columns; i++) e->cols[i].sum = e->arena + (size_t)(i + 1) * max_packet;
    return e;
}

void msm_fec_enc_free(msm_fec_enc *e) {
    if (!e) return;
    free(e->cols);
    free(e->arena);
    free(e);
}

static void enc_restart(msm_fec_enc *e) {
    e->pos = 0;
    e->row.n = 0;
    for (uint32_t i = 0; i < e->columns; i++) e->cols[i].n = 0;
}

/* One FEC packet from a completed sum; its length. */
static uint32_t enc_emit(msm_fec_enc *e, fec_acc *a, int row, uint32_t media_ts, uint8_t *out) {
    out[0] = (uint8_t)(0x80 | (a->b0_x & 0x3f));
    out[1] = (uint8_t)((a->b1_x & 0x80) | (e->payload_type & 0x7f));
    wr16(out + 2, row ? e->row_seq++ : e->col_seq++);
    wr32(out + 4, media_ts);
    wr32(out + 8, e->ssrc);
    uint8_t *h = out + RTP_HEADER;
    wr16(h, a->snbase);
    wr16(h + 2, a->len_x);
    h[4] = (uint8_t)(0x80 | (a->b1_x & 0x7f));      /* E=1, PT recovery */
    h[5] = h[6] = h[7] = 0;                           /* mask */
    wr32(h + 8, a->ts_x);
    h[12] = row ? 0x40 : 0x00;                        /* N=0, D, type 0 (XOR), index 0 */
    h[13] = (uint8_t)(row ? 1 : e->columns);          /* offset */
    h[14] = (uint8_t)(row ? e->columns : e->rows);    /* NA */
    h[15] = 0;                                        /* SNBase ext bits */
    memcpy(h + MSM_FEC_HEADER, a->sum, a->plen);
    a->n = 0;
    e->stats.fec_packets++;
    return RTP_HEADER + MSM_FEC_HEADER + a->plen;
}

/* Protect one media packet; 0..2 FEC packets are written to `out` (slots of `slot` bytes, at least
 * max_packet + 16), their lengths to `lens`, their kinds (1 row, 0 column) to `kinds`. Returns the
 * count, or -1 for a packet that is not RTP or is larger than max_packet (the matrix restarts with
 * the next packet, as after any gap in sequence numbers). */
int msm_fec_enc_push(msm_fec_enc *e, const uint8_t *pkt, size_t len, uint8_t *out, size_t slot, uint32_t *lens,
                     uint8_t *kinds) {
    if (len < RTP_HEADER || (pkt[0] >> 6) != 2 || len > e->max_packet || slot < e->max_packet + MSM_FEC_HEADER) {
        e->stats.bad_media++;
        e->started = 0;
        return -1;
    }
    uint16_t seq = rd16(pkt + 2);
    if (!e->started || seq != (uint16_t)(e->last_seq + 1)) {
        if (e->started) e->stats.restarts++;
        enc_restart(e);
    }
    e->started = 1;
    e->last_seq = seq;
    e->stats.media++;
    uint32_t ts = rd32(pkt + 4);
    int count = 0;
    acc_add(&e->row, pkt, len);
    if (e->row.n == e->columns) {
        lens[count] = enc_emit(e, &e->row, 1, ts, out + (size_t)count * slot);
        kinds[count++] = 1;
    }
    if (e->rows > 0) {
        fec_acc *c = &e->cols[e->pos % e->columns];
        acc_add(c, pkt, len);
        if (c->n == e->rows) {
            lens[count] = enc_emit(e, c, 0, ts, out + (size_t)count * slot);
            kinds[count++] = 0;
        }
    }
    e->pos = (e->pos + 1) % (e->columns * (e->rows ? e->rows : 1));
    return count;
}

void msm_fec_enc_stats_get(const msm_fec_enc *e, msm_fec_enc_stats *out) { *out = e->stats; }

/* A batch as a receive loop holds it: `count` packets `stride` bytes apart, lengths in `lens`. The
 * FEC packets go to `out` as msm_fec_enc_push writes them (`out_max` slots, at least 2 * count);
 * returns their number, or -1 if `out_max` is too small (nothing done). */
long msm_fec_enc_push_batch(msm_fec_enc *e, const uint8_t *pkts, size_t stride, const uint32_t *lens, size_t count,
                            uint8_t *out, size_t slot, uint32_t *out_lens, uint8_t *kinds, size_t out_max) {
    if (out_max < 2 * count) return -1;
    long n = 0;
    for (size_t i = 0; i < count; i++) {
        int k = msm_fec_enc_push(e, pkts + i * stride, lens[i], out + (size_t)n * slot, slot, out_lens + n, kinds + n);
        if (k > 0) n += k;
    }
    return n;
}

/* ---- decoder ----------------------------------------------------------------------------- */

typedef struct {
    int64_t seq;    /* extended sequence number (media) or SNBase (FEC); -1: empty */
    uint32_t len;
    uint8_t *data;
} slot_t;

struct msm_fec_dec {
    uint32_t columns, rows, max_packet, window;
    int anchored;
    int64_t highest, first;
    uint32_t ssrc;
    uint32_t pending;          /* FEC packets stored, waiting for a second-to-last media packet */
    slot_t *media, *rowfec, *colfec;
    uint8_t *arena;
    int64_t *queue;            /* recovered, not yet popped (ring of `window`) */
    uint32_t q_head, q_count;
    int64_t *work;             /* recovered, their FEC not yet checked (stack of `window`) */
    uint32_t w_count;
    msm_fec_dec_stats stats;
};

msm_fec_dec *msm_fec_dec_new(uint32_t columns, uint32_t rows, uint32_t max_packet) {
    if (columns < 1 || columns > MSM_FEC_MAX_COLUMNS || rows > MSM_FEC_MAX_ROWS || max_packet < RTP_HEADER ||
        max_packet > MSM_FEC_MAX_PACKET)
        return NULL;
    msm_fec_dec *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->columns = columns; d->rows = rows; d->max_packet = max_packet;
    d->window = pow2_at_least(3 * columns * (rows ? rows : 1));
    size_t w = d->window, fslot = (size_t)max_packet + MSM_FEC_HEADER;
    d->media = calloc(w, sizeof *d->media);
    d->rowfec = calloc(w, sizeof *d->rowfec);
    d->colfec = rows ? calloc(w, sizeof *d->colfec) : NULL;
    d->arena = malloc(w * max_packet + w * fslot * (rows ? 2 : 1));
    d->queue = calloc(w, sizeof *d->queue);
    d->work = calloc(w, sizeof *d->work);
    if (!d->media || !d->rowfec || (rows && !d->colfec) || !d->arena || !d->queue || !d->work) {
        msm_fec_dec_free(d);
        return NULL;
    }
    uint8_t *at = d->arena;
    for (size_t i = 0; i < w; i++) { d->media[i].seq = -1; d->media[i].data = at; at += max_packet; }
    for (size_t i = 0; i < w; i++) { d->rowfec[i].seq = -1; d->rowfec[i].data = at; at += fslot; }
    for (size_t i = 0; rows && i < w; i++) { d->colfec[i].seq = -1; d->colfec[i].data = at; at += fslot; }
    return d;
}

void msm_fec_dec_free(msm_fec_dec *d) {
    if (!d) return;
    free(d->media); free(d->rowfec); free(d->colfec); free(d->arena); free(d->queue); free(d->work);
    free(d);
}

uint32_t msm_fec_dec_window(const msm_fec_dec *d) { return d->window; }

static slot_t *at(slot_t *ring, const msm_fec_dec *d, int64_t seq) { return &ring[(uint64_t)seq & (d->window - 1)]; }

static int have(const msm_fec_dec *d, int64_t seq) {
    return d->media[(uint64_t)seq & (d->window - 1)].seq == seq;
}

static void drop_fec(msm_fec_dec *d, slot_t *s) {
    s->seq = -1;
    d->pending--;
}

/* Media up to `to` leave the window: count those never received nor recovered, free their FEC. */
static void advance(msm_fec_dec *d, int64_t to) {
    int64_t lo = d->highest - (int64_t)d->window + 1, hi = to - (int64_t)d->window;   /* leaving: [lo, hi] */
    if (hi > d->highest) {          /* a jump past the whole window: the ones skipped never came */
        d->stats.unrecoverable += (uint64_t)(hi - d->highest);
        hi = d->highest;
    }
    for (int64_t x = lo; x <= hi; x++) {
        if (x >= d->first && !have(d, x)) d->stats.unrecoverable++;
        slot_t *r = at(d->rowfec, d, x);
        if (r->seq == x) drop_fec(d, r);
        if (d->rows) {
            slot_t *c = at(d->colfec, d, x);
            if (c->seq == x) drop_fec(d, c);
        }
    }
    d->highest = to;
}

static void store(msm_fec_dec *d, int64_t seq, const uint8_t *pkt, uint32_t len) {
    if (seq > d->highest) advance(d, seq);
    slot_t *s = at(d->media, d, seq);
    s->seq = seq;
    s->len = len;
    memcpy(s->data, pkt, len);
}

/* Rebuild `missing` from the FEC packet in `f` and the other media it protects. */
static void recover(msm_fec_dec *d, slot_t *f, int64_t missing, uint32_t offset, uint32_t count) {
    const uint8_t *fp = f->data, *h = f->data + RTP_HEADER;
    uint32_t flen = f->len - RTP_HEADER - MSM_FEC_HEADER;
    uint16_t length = rd16(h + 2);
    uint8_t b0 = fp[0], b1 = (uint8_t)((fp[1] & 0x80) | (h[4] & 0x7f));
    uint32_t ts = rd32(h + 8);
    int64_t base = f->seq;
    for (uint32_t i = 0; i < count; i++) {
        int64_t s = base + (int64_t)i * offset;
        if (s == missing) continue;
        slot_t *m = at(d->media, d, s);
        length ^= (uint16_t)(m->len - RTP_HEADER);
        b0 ^= m->data[0]; b1 ^= m->data[1]; ts ^= rd32(m->data + 4);
    }
    drop_fec(d, f);
    if (length > flen || (uint32_t)length + RTP_HEADER > d->max_packet) { d->stats.bad_fec++; return; }
    uint8_t pkt[RTP_HEADER];
    pkt[0] = (uint8_t)(0x80 | (b0 & 0x3f)); pkt[1] = b1;
    wr16(pkt + 2, (uint32_t)(missing & 0xffff)); wr32(pkt + 4, ts); wr32(pkt + 8, d->ssrc);
    if (missing > d->highest) advance(d, missing);
    slot_t *out = at(d->media, d, missing);
    memcpy(out->data, pkt, RTP_HEADER);
    memcpy(out->data + RTP_HEADER, h + MSM_FEC_HEADER, length);
    for (uint32_t i = 0; i < count; i++) {
        int64_t s = base + (int64_t)i * offset;
        if (s == missing) continue;
        slot_t *m = at(d->media, d, s);
        uint32_t n = m->len - RTP_HEADER;
        xor_into(out->data + RTP_HEADER, m->data + RTP_HEADER, n < length ? n : length);
    }
    out->seq = missing;
    out->len = (uint32_t)length + RTP_HEADER;
    d->stats.recovered++;
    if (d->q_count == d->window) { d->q_head = (d->q_head + 1) & (d->window - 1); d->q_count--; }
    d->queue[(d->q_head + d->q_count++) & (d->window - 1)] = missing;
    if (d->w_count < d->window) d->work[d->w_count++] = missing;
}

/* The stored FEC packet in `f` (row or column): spent if nothing is missing, used if one is. */
static void try_fec(msm_fec_dec *d, slot_t *f, int row) {
    uint32_t offset = row ? 1 : d->columns, count = row ? d->columns : d->rows;
    int64_t missing = -1;
    uint32_t gaps = 0;
    for (uint32_t i = 0; i < count && gaps < 2; i++) {
        int64_t s = f->seq + (int64_t)i * offset;
        if (!have(d, s)) { gaps++; missing = s; }
    }
    if (gaps == 0) drop_fec(d, f);
    else if (gaps == 1) recover(d, f, missing, offset, count);
}

/* Check every stored FEC packet that protects what is on the work stack (and what that recovers). */
static void run(msm_fec_dec *d) {
    while (d->w_count > 0 && d->pending > 0) {
        int64_t s = d->work[--d->w_count];
        for (uint32_t k = 0; k < d->columns; k++) {
            slot_t *r = at(d->rowfec, d, s - k);
            if (r->seq == s - k) try_fec(d, r, 1);
        }
        for (uint32_t k = 0; d->rows && k < d->rows; k++) {
            int64_t b = s - (int64_t)k * d->columns;
            slot_t *c = at(d->colfec, d, b);
            if (c->seq == b) try_fec(d, c, 0);
        }
    }
    d->w_count = 0;
}

static int64_t place(msm_fec_dec *d, uint16_t seq) {
    if (!d->anchored) {
        d->anchored = 1;
        d->highest = ((int64_t)1 << 32) + seq - 1;
        d->first = d->highest + 1;
    }
    return extend(d->highest, seq);
}

/* A media packet. 0: new (forward it); 1: a copy of one already here or recovered (drop it);
 * 2: older than the window (the decoder cannot tell); -1: not RTP or larger than max_packet. */
int msm_fec_dec_media(msm_fec_dec *d, const uint8_t *pkt, size_t len) {
    if (len < RTP_HEADER || (pkt[0] >> 6) != 2 || len > d->max_packet) { d->stats.bad_media++; return -1; }
    int64_t seq = place(d, rd16(pkt + 2));
    if (seq <= d->highest - (int64_t)d->window) { d->stats.late++; return 2; }
    if (have(d, seq)) { d->stats.duplicates++; return 1; }
    d->stats.media++;
    d->ssrc = rd32(pkt + 8);
    store(d, seq, pkt, (uint32_t)len);
    d->work[0] = seq;
    d->w_count = 1;
    run(d);
    return 0;
}

/* A FEC packet (row or column, told by its D bit). 0: taken; 1: a copy; 2: outside the window (or
 * before any media); -1: not a 2022-1 XOR FEC packet for this L x D. */
int msm_fec_dec_fec(msm_fec_dec *d, const uint8_t *pkt, size_t len) {
    const uint8_t *h = pkt + RTP_HEADER;
    if (len < RTP_HEADER + MSM_FEC_HEADER || (pkt[0] >> 6) != 2 || len > d->max_packet + MSM_FEC_HEADER ||
        !(h[4] & 0x80) || (h[12] & 0x38) != 0) {
        d->stats.bad_fec++;
        return -1;
    }
    int row = (h[12] >> 6) & 1;
    uint32_t offset = h[13], na = h[14];
    if (row ? (offset != 1 || na != d->columns) : (d->rows == 0 || offset != d->columns || na != d->rows)) {
        d->stats.bad_fec++;
        return -1;
    }
    if (!d->anchored) { d->stats.fec_late++; return 2; }
    int64_t base = extend(d->highest, rd16(h));
    int64_t last = base + (int64_t)(na - 1) * offset;
    if (base <= d->highest - (int64_t)d->window || last >= d->highest + (int64_t)d->window) {
        d->stats.fec_late++;
        return 2;
    }
    slot_t *f = at(row ? d->rowfec : d->colfec, d, base);
    if (f->seq == base) { d->stats.fec_duplicates++; return 1; }
    if (f->seq != -1) d->pending--;                 /* an older one in the slot: replaced */
    d->stats.fec++;
    f->seq = base;
    f->len = (uint32_t)len;
    memcpy(f->data, pkt, len);
    d->pending++;
    d->w_count = 0;
    try_fec(d, f, row);
    run(d);
    return 0;
}

/* The next recovered packet into `out`: its length, 0 when none is left, -1 if `cap` is too small. */
long msm_fec_dec_pop(msm_fec_dec *d, uint8_t *out, size_t cap) {
    while (d->q_count > 0) {
        int64_t seq = d->queue[d->q_head];
        slot_t *s = at(d->media, d, seq);
        if (s->seq != seq) { d->q_head = (d->q_head + 1) & (d->window - 1); d->q_count--; continue; }
        if (cap < s->len) return -1;
        d->q_head = (d->q_head + 1) & (d->window - 1);
        d->q_count--;
        memcpy(out, s->data, s->len);
        return (long)s->len;
    }
    return 0;
}

void msm_fec_dec_stats_get(const msm_fec_dec *d, msm_fec_dec_stats *out) { *out = d->stats; }

/* A batch of media and FEC packets as they arrived (`is_fec[i]` tells which), `stride` bytes apart;
 * `codes[i]` is what msm_fec_dec_media / msm_fec_dec_fec said. Recovered packets wait for pop. */
void msm_fec_dec_push_batch(msm_fec_dec *d, const uint8_t *pkts, size_t stride, const uint32_t *lens,
                            const uint8_t *is_fec, size_t count, int *codes) {
    for (size_t i = 0; i < count; i++)
        codes[i] = is_fec[i] ? msm_fec_dec_fec(d, pkts + i * stride, lens[i])
                             : msm_fec_dec_media(d, pkts + i * stride, lens[i]);
}

/* ---- SMPTE 2022-7 de-duplication ----------------------------------------------------------- */

struct msm_dedup {
    uint32_t window;
    int anchored;
    int64_t highest;
    int64_t *seen;
    msm_dedup_stats stats;
};

msm_dedup *msm_dedup_new(uint32_t window) {
    if (window < 16 || window > (1u << 15)) return NULL;
    msm_dedup *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->window = pow2_at_least(window);
    if (d->window > (1u << 15)) { free(d); return NULL; }
    d->seen = malloc(d->window * sizeof *d->seen);
    if (!d->seen) { free(d); return NULL; }
    for (uint32_t i = 0; i < d->window; i++) d->seen[i] = -1;
    return d;
}

void msm_dedup_free(msm_dedup *d) {
    if (!d) return;
    free(d->seen);
    free(d);
}

/* One packet's sequence number from either path. 0: the first copy (forward it); 1: a copy
 * (drop it); 2: older than the window (drop it: the other path delivered it, or it is too late). */
int msm_dedup_push(msm_dedup *d, uint32_t seq16) {
    if (!d->anchored) { d->anchored = 1; d->highest = ((int64_t)1 << 32) + (seq16 & 0xffff); }
    int64_t seq = extend(d->highest, (uint16_t)seq16);
    if (seq <= d->highest - (int64_t)d->window) { d->stats.late++; return 2; }
    int64_t *s = &d->seen[(uint64_t)seq & (d->window - 1)];
    if (*s == seq) { d->stats.duplicates++; return 1; }
    *s = seq;
    if (seq > d->highest) d->highest = seq;
    d->stats.first++;
    return 0;
}

void msm_dedup_stats_get(const msm_dedup *d, msm_dedup_stats *out) { *out = d->stats; }
