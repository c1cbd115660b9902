/* ST 2110-20 (RFC 4175) depacketizer and packetizer; see st2110.h.
 *
 * Receive: recvmmsg fills a staging batch (BATCH packets), each packet is
 * checked (RTP header, payload type, SSRC once learned, source address,
 * every segment's line/offset/length inside the frame) and its segments are
 * copied into the caller's frame buffer. A packet whose timestamp starts a
 * new frame stays in the batch until the caller comes back with the next
 * buffer. Send: a frame becomes one contiguous array of packets (fixed
 * stride) plus their lengths, sent with sendmmsg in slots spread over the
 * frame period (an even spread, not an ST 2110-21 model; a pacer can take
 * the same array instead). */
#define _GNU_SOURCE
#include "st2110.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* Packets per recvmmsg/sendmmsg call: 64 amortises the system call (about
 * 0.6 ms of 1080p30 10-bit traffic) and bounds the staging memory to
 * 64 x 9000 bytes per receiver. */
#define BATCH 64
#define SRD 6
#define HDR 12
#define MAX_SEGMENTS 64

struct msm_st2110_rx {
    int fd;
    uint32_t width, height, pg_bytes, pg_pixels, stride;
    int payload_type;
    int have_ssrc;
    uint32_t ssrc;
    int src_family;
    uint8_t src_addr[16];
    uint16_t src_port;
    /* frame in progress */
    int in_frame;
    uint32_t ts;
    msm_st2110_frame cur;
    int have_done_ts;
    uint32_t done_ts;
    int have_seq;
    uint16_t next_seq;
    uint32_t gap;
    msm_st2110_rx_stats st;
    char last_error[160];
    /* staging batch */
    int n, i;
    int64_t coalesce_ns;
    uint8_t buf[BATCH][MSM_ST2110_MAX_PACKET];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_storage from[BATCH];
};

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

msm_st2110_rx *msm_st2110_rx_new(int fd, uint32_t width, uint32_t height, uint32_t pg_bytes,
                                 uint32_t pg_pixels, int payload_type) {
    if (!width || !height || !pg_bytes || !pg_pixels || width % pg_pixels || width > 0x7FFF || height > 0x7FFF)
        return NULL;
    msm_st2110_rx *rx = calloc(1, sizeof *rx);
    if (!rx) return NULL;
    rx->fd = fd;
    rx->width = width; rx->height = height; rx->pg_bytes = pg_bytes; rx->pg_pixels = pg_pixels;
    rx->stride = width / pg_pixels * pg_bytes;
    rx->payload_type = payload_type;
    for (int k = 0; k < BATCH; k++) {
        rx->iov[k].iov_base = rx->buf[k];
        rx->iov[k].iov_len = MSM_ST2110_MAX_PACKET;
    }
    return rx;
}

void msm_st2110_rx_free(msm_st2110_rx *rx) { free(rx); }

void msm_st2110_rx_set_coalesce(msm_st2110_rx *rx, uint32_t us) { rx->coalesce_ns = (int64_t)us * 1000; }

void msm_st2110_rx_set_ssrc(msm_st2110_rx *rx, int64_t ssrc) {
    rx->have_ssrc = ssrc >= 0;
    rx->ssrc = (uint32_t)ssrc;
}

int msm_st2110_rx_set_source(msm_st2110_rx *rx, int family, const uint8_t *addr, uint16_t port) {
    if (family != 0 && family != AF_INET && family != AF_INET6) return -1;
    rx->src_family = family;
    memset(rx->src_addr, 0, sizeof rx->src_addr);
    if (family) memcpy(rx->src_addr, addr, family == AF_INET ? 4 : 16);
    rx->src_port = port;
    return 0;
}

void msm_st2110_rx_stats_get(const msm_st2110_rx *rx, msm_st2110_rx_stats *out) { *out = rx->st; }

const char *msm_st2110_rx_last_error(const msm_st2110_rx *rx) { return rx->last_error; }

static void fail(msm_st2110_rx *rx, uint64_t *counter, const char *msg) {
    (*counter)++;
    strncpy(rx->last_error, msg, sizeof rx->last_error - 1);
}

/* Payload bounds without CSRCs, extension and padding; 0 if not RTP. */
static int payload_bounds(const uint8_t *p, size_t len, size_t *start, size_t *end) {
    if (len < HDR + 2 || p[0] >> 6 != 2) return 0;
    size_t s = HDR + 4u * (p[0] & 0x0F), e = len;
    if (p[0] & 0x10) {
        if (s + 4 > e) return 0;
        s += 4 + 4u * rd16(p + s + 2);
    }
    if (p[0] & 0x20) {
        if (p[len - 1] > e) return 0;
        e -= p[len - 1];
    }
    if (s + 2 > e) return 0;
    *start = s; *end = e;
    return 1;
}

/* Check every segment; on success *nseg segments start at p + start + 2. */
static int check_segments(const msm_st2110_rx *rx, const uint8_t *p, size_t start, size_t end, int *nseg) {
    size_t pos = start + 2;
    int n = 0;
    for (;;) {
        if (pos + SRD > end) return 0;
        n++;
        int more = p[pos + 4] & 0x80;
        pos += SRD;
        if (!more || n > MAX_SEGMENTS) break;
    }
    const uint8_t *h = p + start + 2;
    for (int k = 0; k < n; k++, h += SRD) {
        uint32_t length = rd16(h), line = rd16(h + 2) & 0x7FFF, off = rd16(h + 4) & 0x7FFF;
        if (line >= rx->height || off >= rx->width || off % rx->pg_pixels || length % rx->pg_bytes || !length)
            return 0;
        if (off / rx->pg_pixels * rx->pg_bytes + length > rx->stride) return 0;
        if (pos + length > end) return 0;
        pos += length;
    }
    *nseg = n;
    return 1;
}

static void finish(msm_st2110_rx *rx, int no_marker, msm_st2110_frame *done) {
    msm_st2110_frame *f = &rx->cur;
    f->no_marker = no_marker;
    f->complete = !no_marker && !f->lost && f->bytes == (uint64_t)rx->stride * rx->height;
    if (f->complete) rx->st.frames_complete++;
    else rx->st.frames_incomplete++;
    rx->have_done_ts = 1;
    rx->done_ts = f->timestamp;
    rx->in_frame = 0;
    *done = *f;
}

static void write_segments(msm_st2110_rx *rx, const uint8_t *p, size_t start, int nseg, uint8_t *frame) {
    const uint8_t *h = p + start + 2;
    const uint8_t *data = h + SRD * nseg;
    for (int k = 0; k < nseg; k++, h += SRD) {
        uint32_t length = rd16(h), line = rd16(h + 2) & 0x7FFF, off = rd16(h + 4) & 0x7FFF;
        memcpy(frame + (size_t)line * rx->stride + off / rx->pg_pixels * rx->pg_bytes, data, length);
        data += length;
        rx->cur.bytes += length;
        rx->st.bytes += length;
    }
}

/* Sequence bookkeeping on the 16-bit RTP sequence number (GStreamer's
 * rtpvrawpay leaves the extended field at 0); 0 if late or repeated. */
static int sequence(msm_st2110_rx *rx, uint16_t seq) {
    if (rx->have_seq) {
        uint16_t ahead = (uint16_t)(seq - rx->next_seq);
        if (ahead >= 0x8000) return 0;
        rx->st.lost += ahead;
        rx->gap += ahead;
    }
    rx->have_seq = 1;
    rx->next_seq = (uint16_t)(seq + 1);
    return 1;
}

int msm_st2110_rx_push(msm_st2110_rx *rx, const uint8_t *p, size_t len, uint8_t *frame, msm_st2110_frame *done) {
    size_t start, end;
    int nseg;
    if (!payload_bounds(p, len, &start, &end)) { fail(rx, &rx->st.bad_rtp, "not an RTP packet"); return 0; }
    if ((p[1] & 0x7F) != rx->payload_type) { fail(rx, &rx->st.bad_pt, "wrong payload type"); return 0; }
    uint32_t ssrc = rd32(p + 8), ts = rd32(p + 4);
    if (rx->have_ssrc && ssrc != rx->ssrc) { fail(rx, &rx->st.bad_ssrc, "wrong SSRC"); return 0; }
    if (!check_segments(rx, p, start, end, &nseg)) {
        fail(rx, &rx->st.bad_segment, "segment outside the frame or past the packet");
        return 0;
    }
    uint16_t seq = rd16(p + 2);
    rx->have_ssrc = 1;
    rx->ssrc = ssrc;
    if (!sequence(rx, seq)) { fail(rx, &rx->st.late, "late or repeated sequence number"); return 0; }
    if (rx->have_done_ts && ts == rx->done_ts) { fail(rx, &rx->st.late, "packet of a finished frame"); return 0; }
    if (rx->in_frame && rx->ts != ts) {
        /* A gap before a new frame's first packet, in a frame that never saw
         * its marker, is that frame's loss. The packet is not consumed: the
         * caller pushes it again with the next buffer (its sequence number
         * then counts as the expected one). */
        rx->cur.lost += rx->gap;
        rx->gap = 0;
        rx->next_seq = seq;
        finish(rx, 1, done);
        return 2;
    }
    rx->st.packets++;
    if (!rx->in_frame) {
        memset(&rx->cur, 0, sizeof rx->cur);
        rx->in_frame = 1;
        rx->ts = ts;
        rx->cur.timestamp = ts;
    }
    rx->cur.lost += rx->gap;
    rx->gap = 0;
    rx->cur.packets++;
    write_segments(rx, p, start, nseg, frame);
    if (p[1] & 0x80) { finish(rx, 0, done); return 1; }
    return 0;
}

static int from_source(const msm_st2110_rx *rx, const struct sockaddr_storage *ss) {
    if (!rx->src_family) return 1;
    if (ss->ss_family != rx->src_family) return 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        return !memcmp(&a->sin_addr, rx->src_addr, 4) && (!rx->src_port || ntohs(a->sin_port) == rx->src_port);
    }
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    return !memcmp(&a->sin6_addr, rx->src_addr, 16) && (!rx->src_port || ntohs(a->sin6_port) == rx->src_port);
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Fill the staging batch; 1 got packets, 0 timed out, -1 error. */
static int receive(msm_st2110_rx *rx, int64_t deadline) {
    for (;;) {
        for (int k = 0; k < BATCH; k++) {
            memset(&rx->msgs[k].msg_hdr, 0, sizeof rx->msgs[k].msg_hdr);
            rx->msgs[k].msg_hdr.msg_iov = &rx->iov[k];
            rx->msgs[k].msg_hdr.msg_iovlen = 1;
            /* the sender's address only when it is checked (one copy to user space less a packet) */
            rx->msgs[k].msg_hdr.msg_name = rx->src_family ? &rx->from[k] : NULL;
            rx->msgs[k].msg_hdr.msg_namelen = rx->src_family ? sizeof rx->from[k] : 0;
        }
        int n = recvmmsg(rx->fd, rx->msgs, BATCH, MSG_DONTWAIT, NULL);
        if (n > 0) { rx->n = n; rx->i = 0; rx->st.batches++; return 1; }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            rx->st.recv_errors++;
            if (errno != ECONNREFUSED) return -1;
        }
        int64_t left = deadline - now_ns();
        if (left <= 0) return 0;
        struct pollfd pfd = {.fd = rx->fd, .events = POLLIN};
        int r = poll(&pfd, 1, (int)((left + 999999) / 1000000));
        if (r < 0 && errno != EINTR) return -1;
    }
}

int msm_st2110_rx_poll(msm_st2110_rx *rx, uint8_t *frame, int timeout_ms, msm_st2110_frame *done) {
    int64_t deadline = now_ns() + (int64_t)timeout_ms * 1000000;
    for (;;) {
        while (rx->i < rx->n) {
            struct mmsghdr *m = &rx->msgs[rx->i];
            if (m->msg_hdr.msg_flags & MSG_TRUNC) {
                fail(rx, &rx->st.bad_rtp, "datagram larger than the largest packet");
                rx->i++;
                continue;
            }
            if (!from_source(rx, &rx->from[rx->i])) {
                fail(rx, &rx->st.bad_source, "datagram from another source");
                rx->i++;
                continue;
            }
            int r = msm_st2110_rx_push(rx, rx->buf[rx->i], m->msg_len, frame, done);
            if (r == 2) return 1;
            rx->i++;
            if (r == 1) return 1;
        }
        /* Interrupt moderation: after a batch that was not full, let packets
         * gather before the next system call (fewer, fuller batches; the
         * socket buffer holds far more than one window). */
        if (rx->coalesce_ns && rx->n > 0 && rx->n < BATCH) {
            int64_t at = now_ns() + rx->coalesce_ns;
            struct timespec t = {.tv_sec = at / 1000000000, .tv_nsec = at % 1000000000};
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
        }
        rx->n = rx->i = 0;
        int r = receive(rx, deadline);
        if (r <= 0) return r;
    }
}

int msm_st2110_rx_flush(msm_st2110_rx *rx, msm_st2110_frame *done) {
    if (!rx->in_frame) return 0;
    rx->cur.lost += rx->gap;
    rx->gap = 0;
    finish(rx, 1, done);
    return 1;
}

/* ------------------------------------------------------------------ send */

static uint8_t *put_packet_header(uint8_t *o, int marker, int pt, uint32_t ext, uint32_t ts, uint32_t ssrc) {
    o[0] = 0x80;
    o[1] = (uint8_t)((marker ? 0x80 : 0) | (pt & 0x7F));
    o[2] = (uint8_t)(ext >> 8); o[3] = (uint8_t)ext;
    o[4] = (uint8_t)(ts >> 24); o[5] = (uint8_t)(ts >> 16); o[6] = (uint8_t)(ts >> 8); o[7] = (uint8_t)ts;
    o[8] = (uint8_t)(ssrc >> 24); o[9] = (uint8_t)(ssrc >> 16); o[10] = (uint8_t)(ssrc >> 8); o[11] = (uint8_t)ssrc;
    o[12] = (uint8_t)(ext >> 24); o[13] = (uint8_t)(ext >> 16);
    return o + 14;
}

typedef struct { uint32_t line, off_bytes, length; } seg;

/* One packet's segments, the same walk as msm.sdk.rfc4175.packet_plan. */
static int plan_packet(uint32_t *line, uint32_t *off, uint32_t height, uint32_t stride, uint32_t pg,
                       uint32_t room, uint32_t limit, seg *out) {
    uint32_t used = 0, data = 0;
    int n = 0;
    while (*line < height && n < MAX_SEGMENTS) {
        int64_t a = ((int64_t)room - used - SRD) / pg * pg, b = ((int64_t)limit - data) / pg * pg;
        int64_t take = a < b ? a : b;
        if (take > (int64_t)(stride - *off)) take = stride - *off;
        if (take <= 0) break;
        out[n].line = *line; out[n].off_bytes = *off; out[n].length = (uint32_t)take;
        n++;
        used += SRD + (uint32_t)take;
        data += (uint32_t)take;
        *off += (uint32_t)take;
        if (*off == stride) { (*line)++; *off = 0; }
    }
    return n;
}

/* Packets per line when each is one equal slice of it (0: none); as msm.sdk.rfc4175.line_split. */
static uint32_t line_split(uint32_t stride, uint32_t pg, uint32_t most) {
    if (most < pg) return 0;
    for (uint32_t k = (stride + most - 1) / most; k <= MAX_SEGMENTS; k++)
        if (stride % k == 0 && (stride / k) % pg == 0) return k;
    return 0;
}

/* Mode 3, equal packets: `equal` bytes of the frame each (the last one what is left), always in
 * two segments, so every packet but the last is the same size (UDP GSO sends them in runs as
 * long as it likes) and the frame takes a seventh fewer packets than line slices. A packet that
 * crosses a line ends one and starts the next; one inside a line gives it two segments of that
 * line, one after the other (RFC 4175 lets a packet carry any segments; receivers copy each). */
static int equal_packet(uint32_t *line, uint32_t *off, uint32_t height, uint32_t stride, uint32_t pg,
                        uint32_t equal, seg *out) {
    uint64_t rest = (uint64_t)(height - *line) * stride - *off;
    uint32_t want = rest < equal ? (uint32_t)rest : equal, left = stride - *off;
    int n;
    if (want > left) {   /* the end of this line and the start of the next */
        out[0] = (seg){*line, *off, left};
        out[1] = (seg){*line + 1, 0, want - left};
        n = 2;
        (*line)++;
        *off = want - left;
    } else {
        uint32_t half = want / 2 / pg * pg;
        out[0] = (seg){*line, *off, half ? half : want};
        out[1] = (seg){*line, *off + half, want - half};
        n = half ? 2 : 1;
        *off += want;
    }
    if (*off == stride) { (*line)++; *off = 0; }
    return n;
}

/* The walk of msm_st2110_packetize and msm_st2110_headers (mode: 0 GPM, 1 BPM, 2 GPM line slices,
 * 3 GPM equal packets). heads == NULL: packets back to back
 * in out, each its header and payload (lens: their sizes). Otherwise only headers, header k at
 * out + k * head_stride (lens: header sizes), and the payload as its span of the frame
 * (heads[k] = offset; pay_lens[k] = bytes): a packet's segments follow each other in the frame. */
static long walk(const uint8_t *frame, uint32_t width, uint32_t height, uint32_t pg_bytes, uint32_t pg_pixels,
                 uint32_t mtu, int bpm, uint32_t seq, uint32_t timestamp, uint32_t ssrc, int payload_type,
                 uint8_t *out, size_t out_cap, uint32_t *lens, size_t max_packets, uint32_t *heads,
                 uint32_t *pay_lens, size_t head_stride) {
    if (!pg_bytes || !pg_pixels || width % pg_pixels || mtu > MSM_ST2110_MAX_PACKET) return -1;
    uint32_t stride = width / pg_pixels * pg_bytes, room = mtu - HDR - 2;
    uint32_t limit = bpm == 1 ? MSM_ST2110_BPM_DATA : room;
    if (mtu < HDR + 2 + SRD || room - SRD < (bpm == 1 ? MSM_ST2110_BPM_DATA : pg_bytes)) return -1;
    uint32_t line = 0, off = 0, split = bpm == 2 ? line_split(stride, pg_bytes, room - SRD) : 0;
    uint32_t equal = bpm == 3 ? (room - 2 * SRD) / pg_bytes * pg_bytes : 0;
    if (bpm == 3 && (equal < pg_bytes || equal > stride)) return -1;
    size_t count = 0, at = 0;
    seg segs[MAX_SEGMENTS];
    while (line < height) {
        if (count == max_packets || at + (heads ? head_stride : mtu) > out_cap) return -1;
        int n = 1;
        if (split) {   /* one equal slice of the line per packet */
            segs[0].line = line; segs[0].off_bytes = off; segs[0].length = stride / split;
            off += stride / split;
            if (off == stride) { line++; off = 0; }
        } else if (equal) {
            n = equal_packet(&line, &off, height, stride, pg_bytes, equal, segs);
        } else {
            n = plan_packet(&line, &off, height, stride, pg_bytes, room, limit, segs);
        }
        if (heads && HDR + 2u + SRD * (uint32_t)n > head_stride) return -1;
        uint8_t *o = put_packet_header(out + at, line >= height, payload_type,
                                       seq + (uint32_t)count, timestamp, ssrc);
        for (int k = 0; k < n; k++, o += SRD) {
            uint32_t px = segs[k].off_bytes / pg_bytes * pg_pixels;
            o[0] = (uint8_t)(segs[k].length >> 8); o[1] = (uint8_t)segs[k].length;
            o[2] = (uint8_t)(segs[k].line >> 8); o[3] = (uint8_t)segs[k].line;
            o[4] = (uint8_t)((k < n - 1 ? 0x80 : 0) | px >> 8); o[5] = (uint8_t)px;
        }
        if (heads) {
            uint32_t bytes = 0;
            for (int k = 0; k < n; k++) bytes += segs[k].length;
            heads[count] = segs[0].line * stride + segs[0].off_bytes;
            pay_lens[count] = bytes;
            lens[count] = (uint32_t)(o - (out + at));
            at += head_stride;
            count++;
            continue;
        }
        for (int k = 0; k < n; k++) {
            memcpy(o, frame + (size_t)segs[k].line * stride + segs[k].off_bytes, segs[k].length);
            o += segs[k].length;
        }
        lens[count] = (uint32_t)(o - (out + at));
        at += lens[count];
        count++;
    }
    return (long)count;
}

long msm_st2110_packetize(const uint8_t *frame, uint32_t width, uint32_t height, uint32_t pg_bytes,
                          uint32_t pg_pixels, uint32_t mtu, int bpm, uint32_t seq, uint32_t timestamp,
                          uint32_t ssrc, int payload_type, uint8_t *out, size_t out_cap,
                          uint32_t *lens, size_t max_packets) {
    return walk(frame, width, height, pg_bytes, pg_pixels, mtu, bpm, seq, timestamp, ssrc, payload_type, out,
                out_cap, lens, max_packets, NULL, NULL, 0);
}

long msm_st2110_headers(uint32_t width, uint32_t height, uint32_t pg_bytes, uint32_t pg_pixels, uint32_t mtu,
                        int mode, uint32_t seq, uint32_t timestamp, uint32_t ssrc, int payload_type,
                        uint8_t *heads, size_t head_stride, size_t max_packets, uint32_t *head_lens,
                        uint32_t *pay_offs, uint32_t *pay_lens) {
    return walk(NULL, width, height, pg_bytes, pg_pixels, mtu, mode, seq, timestamp, ssrc, payload_type, heads,
                head_stride * max_packets, head_lens, max_packets, pay_offs, pay_lens, head_stride);
}

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
/* A GSO message: at most 64 segments (the kernel's UDP_MAX_SEGMENTS) and
 * 63 000 bytes (under the 65 507-byte UDP payload limit). */
#define GSO_SEGMENTS 64
#define GSO_BYTES 63000

/* iovecs a sendmmsg call carries at most (the kernel's UIO_MAXIOV is per message, 1024):
 * a header and a payload iovec a packet in the frame form, 16 kB on the sending stack. */
#define IOV_POOL 1024

typedef struct {
    int fd;
    struct sockaddr_storage *dst;
    socklen_t dlen;
    const uint8_t *buf;
    const uint32_t *lens;
    size_t at;          /* byte offset of packet `from` in buf */
    int gso;            /* 1: equal-length runs go as one UDP_SEGMENT message */
    /* the frame form (heads != NULL): packet k is its header at heads + k * head_stride
     * (head_lens[k] bytes) then frame[pay_offs[k] .. + pay_lens[k]]; nothing is copied */
    const uint8_t *heads;
    size_t head_stride;
    const uint32_t *head_lens;
    const uint8_t *frame;
    const uint32_t *pay_offs;
    const uint32_t *pay_lens;
} sender;

static size_t plen(const sender *sd, size_t k) {
    return sd->heads ? (size_t)sd->head_lens[k] + sd->pay_lens[k] : sd->lens[k];
}

/* Packets [from, to): one message each, or (GSO) one per run of equal lengths
 * (its last packet may be shorter, as UDP_SEGMENT allows). */
static size_t build(sender *sd, size_t from, size_t to, struct mmsghdr *msgs, struct iovec *iov,
                    char (*ctl)[CMSG_SPACE(sizeof(uint16_t))], size_t *counts, size_t *nmsg) {
    size_t m = 0, pos = sd->at, k = from, used = 0;
    size_t per = sd->heads ? 2 : 1;   /* iovecs a packet takes */
    while (k < to && m < BATCH && used + per <= IOV_POOL) {
        size_t n = 1, bytes = plen(sd, k), first = plen(sd, k);
        if (sd->gso)
            while (k + n < to && n < GSO_SEGMENTS && (used + per * (n + 1)) <= IOV_POOL
                   && plen(sd, k + n) <= first && bytes + plen(sd, k + n) <= GSO_BYTES) {
                bytes += plen(sd, k + n);
                n++;
                if (plen(sd, k + n - 1) < first) break;
            }
        memset(&msgs[m].msg_hdr, 0, sizeof msgs[m].msg_hdr);
        msgs[m].msg_hdr.msg_iov = &iov[used];
        if (sd->heads) {
            for (size_t q = k; q < k + n; q++) {
                iov[used++] = (struct iovec){.iov_base = (void *)(sd->heads + q * sd->head_stride),
                                             .iov_len = sd->head_lens[q]};
                iov[used++] = (struct iovec){.iov_base = (void *)(sd->frame + sd->pay_offs[q]),
                                             .iov_len = sd->pay_lens[q]};
            }
            msgs[m].msg_hdr.msg_iovlen = 2 * n;
        } else {
            iov[used++] = (struct iovec){.iov_base = (void *)(sd->buf + pos), .iov_len = bytes};
            msgs[m].msg_hdr.msg_iovlen = 1;
        }
        msgs[m].msg_hdr.msg_name = sd->dlen ? sd->dst : NULL;
        msgs[m].msg_hdr.msg_namelen = sd->dlen;
        if (n > 1) {
            msgs[m].msg_hdr.msg_control = ctl[m];
            msgs[m].msg_hdr.msg_controllen = sizeof ctl[m];
            struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[m].msg_hdr);
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t seg = (uint16_t)first;
            memcpy(CMSG_DATA(c), &seg, sizeof seg);
        }
        counts[m++] = n;
        pos += bytes;
        k += n;
    }
    *nmsg = m;
    return k;
}

static void send_run(sender *sd, size_t from, size_t to, msm_st2110_tx_stats *st) {
    struct mmsghdr msgs[BATCH];
    struct iovec iov[IOV_POOL];
    char ctl[BATCH][CMSG_SPACE(sizeof(uint16_t))];
    size_t counts[BATCH], m;
    while (from < to) {
        build(sd, from, to, msgs, iov, ctl, counts, &m);
        int r = sendmmsg(sd->fd, msgs, (unsigned)m, 0);
        if (r <= 0) {
            if (errno == EINTR) continue;
            st->send_errors++;
            if (errno == EAGAIN || errno == ENOBUFS) {
                struct pollfd pfd = {.fd = sd->fd, .events = POLLOUT};
                poll(&pfd, 1, 1);
                continue;
            }
            if (sd->gso && (errno == EIO || errno == EINVAL || errno == ENOPROTOOPT)) {
                sd->gso = 0;   /* no GSO on this route: one message per packet from now on */
                st->gso_disabled = 1;
                continue;
            }
            sd->at += plen(sd, from);
            from++;   /* e.g. ECONNREFUSED from an earlier datagram: skip one, go on */
            continue;
        }
        for (int j = 0; j < r; j++) {
            for (size_t q = 0; q < counts[j]; q++) {
                st->bytes_sent += plen(sd, from);
                sd->at += plen(sd, from);
                from++;
            }
            st->packets_sent += counts[j];
            if (counts[j] > 1) st->gso_sends++;
        }
    }
}

/* Slot length of the even spread: 250 us keeps a slot's burst to about 28
 * packets at 1080p30 10-bit while waking the thread 4000 times a second. */
#define SLOT_NS 250000

static int set_dest(sender *sd, int family, const uint8_t *addr, uint16_t port) {
    memset(sd->dst, 0, sizeof *sd->dst);
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)sd->dst;
        a->sin_family = AF_INET; a->sin_port = htons(port); memcpy(&a->sin_addr, addr, 4);
        sd->dlen = sizeof *a;
    } else if (family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)sd->dst;
        a->sin6_family = AF_INET6; a->sin6_port = htons(port); memcpy(&a->sin6_addr, addr, 16);
        sd->dlen = sizeof *a;
    } else if (family != 0) {   /* 0: a connected socket, no address per datagram (no route lookup per packet) */
        errno = EAFNOSUPPORT;
        return -1;
    }
    return 0;
}

static long spread(sender *sd, size_t count, uint64_t spread_ns, msm_st2110_tx_stats *st) {
    size_t slots = spread_ns / SLOT_NS;
    if (slots < 2 || count < 2) {
        send_run(sd, 0, count, st);
        return (long)count;
    }
    int64_t start = now_ns();
    size_t sent = 0;
    for (size_t k = 1; k <= slots; k++) {
        size_t upto = count * k / slots;
        send_run(sd, sent, upto, st);
        sent = upto;
        int64_t at = start + (int64_t)(spread_ns * k / slots), now = now_ns();
        if (now > at) { st->late_ns += (uint64_t)(now - at); continue; }
        struct timespec t = {.tv_sec = at / 1000000000, .tv_nsec = at % 1000000000};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
    }
    return (long)count;
}

long msm_st2110_send(int fd, int family, const uint8_t *addr, uint16_t port, const uint8_t *buf,
                     const uint32_t *lens, size_t count, uint64_t spread_ns, int gso, msm_st2110_tx_stats *st) {
    struct sockaddr_storage dst;
    sender sd = {.fd = fd, .dst = &dst, .buf = buf, .lens = lens, .gso = gso && !st->gso_disabled};
    if (set_dest(&sd, family, addr, port)) return -1;
    return spread(&sd, count, spread_ns, st);
}

long msm_st2110_send_frame(int fd, int family, const uint8_t *addr, uint16_t port, const uint8_t *heads,
                           size_t head_stride, const uint32_t *head_lens, const uint8_t *frame,
                           const uint32_t *pay_offs, const uint32_t *pay_lens, size_t count, uint64_t spread_ns,
                           int gso, msm_st2110_tx_stats *st) {
    struct sockaddr_storage dst;
    sender sd = {.fd = fd, .dst = &dst, .gso = gso && !st->gso_disabled, .heads = heads,
                 .head_stride = head_stride, .head_lens = head_lens, .frame = frame, .pay_offs = pay_offs,
                 .pay_lens = pay_lens};
    if (set_dest(&sd, family, addr, port)) return -1;
    return spread(&sd, count, spread_ns, st);
}
