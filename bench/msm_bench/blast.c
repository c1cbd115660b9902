/* The benchmark's C sender and receiver (see blast.h). */
#define _GNU_SOURCE
#include "blast.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#define MAX_BATCH 1024 /* sendmmsg's limit (UIO_MAXIOV) */
#define MAX_GSO 64 /* UDP_MAX_SEGMENTS on older kernels */
#define RX_BATCH 64
#define RX_SLOT 65536 /* a GRO train is at most 64 KiB */

static int64_t mono_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void sleep_until(int64_t ns) {
    struct timespec t = {ns / 1000000000, ns % 1000000000};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL) == EINTR) {
    }
}

typedef struct stream {
    uint16_t seq;
    uint32_t ts;
} stream;

static void put16(uint8_t *p, uint16_t v) {
    p[0] = v >> 8;
    p[1] = v;
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

static void make_packet(uint8_t *p, stream *s, uint32_t ssrc, uint32_t index) {
    p[0] = 0x80;
    p[1] = 96;
    put16(p + 2, s->seq++);
    put32(p + 4, s->ts);
    s->ts += 3000;
    put32(p + 8, ssrc);
    memcpy(p + 20, &index, 4);
}

int blast_send(const blast_send_cfg *cfg, uint64_t *per_dest, blast_send_result *out) {
    uint32_t gso = cfg->gso > 1 ? cfg->gso : 1, batch = cfg->batch ? cfg->batch : 64, size = cfg->size;
    uint32_t per_call, next = 0;
    struct sockaddr_in *dst;
    stream *streams;
    uint8_t *bufs;
    struct mmsghdr *msgs;
    struct iovec *iov;
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } ctl;
    uint32_t *dest_of;
    int64_t start, end;
    uint64_t sent = 0;
    if (gso > MAX_GSO)
        gso = MAX_GSO;
    if (batch > MAX_BATCH)
        batch = MAX_BATCH;
    if (size < 24 || size > 65000 || !cfg->ndest || (uint64_t)gso * size > 65000) {
        errno = EINVAL;
        return -1;
    }
    per_call = batch * gso;
    memset(out, 0, sizeof *out);
    dst = calloc(cfg->ndest, sizeof *dst);
    streams = calloc(cfg->ndest, sizeof *streams);
    bufs = calloc(per_call, size);
    msgs = calloc(batch, sizeof *msgs);
    iov = calloc(batch, sizeof *iov);
    dest_of = calloc(batch, sizeof *dest_of);
    if (!dst || !streams || !bufs || !msgs || !iov || !dest_of) {
        free(dst), free(streams), free(bufs), free(msgs), free(iov), free(dest_of);
        errno = ENOMEM;
        return -1;
    }
    for (uint32_t d = 0; d < cfg->ndest; d++) {
        dst[d].sin_family = AF_INET;
        dst[d].sin_port = htons(cfg->ports[d]);
        dst[d].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        streams[d].seq = (uint16_t)(d * 7919);
        streams[d].ts = d * 104729u;
    }
    if (gso > 1) {
        struct cmsghdr *c = &ctl.align;
        uint16_t s16 = (uint16_t)size;
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        memcpy(CMSG_DATA(c), &s16, sizeof s16);
    }
    start = mono_ns();
    end = start + (int64_t)(cfg->duration * 1e9);
    for (;;) {
        int64_t now = mono_ns();
        uint64_t want = per_call;
        uint32_t nmsg = 0, left, off = 0;
        if (now >= end)
            break;
        if (cfg->rate > 0) {
            uint64_t due = (uint64_t)((double)(now - start) * 1e-9 * cfg->rate);
            if (due <= sent) {
                int64_t at = start + (int64_t)((double)(sent + 1) / cfg->rate * 1e9);
                sleep_until(at < end ? at : end);
                continue;
            }
            if (due - sent < want)
                want = due - sent;
        }
        /* Build: one message per packet, or per GSO run to one destination. */
        left = (uint32_t)want;
        while (left && nmsg < batch) {
            uint32_t d = next++ % cfg->ndest, n = left < gso ? left : gso;
            uint8_t *base = bufs + (size_t)nmsg * gso * size;
            for (uint32_t k = 0; k < n; k++) {
                uint8_t *p = base + (size_t)k * size;
                make_packet(p, &streams[d], cfg->ssrc_base + d, d);
                memcpy(p + 12, &now, 8);
            }
            iov[nmsg].iov_base = base;
            iov[nmsg].iov_len = (size_t)n * size;
            memset(&msgs[nmsg], 0, sizeof msgs[nmsg]);
            msgs[nmsg].msg_hdr.msg_name = &dst[d];
            msgs[nmsg].msg_hdr.msg_namelen = sizeof dst[d];
            msgs[nmsg].msg_hdr.msg_iov = &iov[nmsg];
            msgs[nmsg].msg_hdr.msg_iovlen = 1;
            if (n > 1) {
                msgs[nmsg].msg_hdr.msg_control = ctl.buf;
                msgs[nmsg].msg_hdr.msg_controllen = sizeof ctl.buf;
            }
            dest_of[nmsg] = d;
            nmsg++;
            left -= n;
        }
        while (off < nmsg) {
            int r = sendmmsg(cfg->fd, msgs + off, nmsg - off, 0);
            out->calls++;
            if (r > 0) {
                for (uint32_t k = off; k < off + (uint32_t)r; k++) {
                    uint32_t n = (uint32_t)(iov[k].iov_len / size);
                    sent += n;
                    out->bytes += iov[k].iov_len;
                    if (per_dest)
                        per_dest[dest_of[k]] += n;
                }
                off += r;
            } else if (r < 0 && errno == EINTR) {
                continue;
            } else {
                out->errors++;
                off++;
            }
        }
    }
    out->packets = sent;
    out->elapsed = (double)(mono_ns() - start) * 1e-9;
    free(dst), free(streams), free(bufs), free(msgs), free(iov), free(dest_of);
    return 0;
}

static void account(blast_recv_result *out, const uint8_t *p, uint32_t len, int64_t now) {
    int64_t sent;
    if (len < 24 || (p[0] & 0xC0) != 0x80) {
        out->bad++;
        return;
    }
    out->packets++;
    out->bytes += len;
    memcpy(&sent, p + 12, 8);
    if (sent > 0 && sent <= now) {
        uint64_t lat = (uint64_t)(now - sent);
        uint64_t bucket = lat / 1000;
        out->hist[bucket < BLAST_HIST - 1 ? bucket : BLAST_HIST - 1]++;
        out->lat_count++;
        out->lat_sum_ns += (double)lat;
        if (lat > out->lat_max_ns)
            out->lat_max_ns = lat;
    }
}

int blast_recv(const blast_recv_cfg *cfg, uint64_t *per_fd, blast_recv_result *out) {
    int ep = epoll_create1(EPOLL_CLOEXEC), one = 1, stop = 0;
    struct epoll_event ev, evs[256];
    uint8_t *slots = malloc((size_t)RX_BATCH * RX_SLOT);
    struct mmsghdr msgs[RX_BATCH];
    struct iovec iov[RX_BATCH];
    union {
        char buf[CMSG_SPACE(sizeof(int)) + 32];
        struct cmsghdr align;
    } ctl[RX_BATCH];
    memset(out, 0, sizeof *out);
    if (ep < 0 || !slots) {
        if (ep >= 0)
            close(ep);
        free(slots);
        errno = ENOMEM;
        return -1;
    }
    for (int i = 0; i < RX_BATCH; i++) {
        iov[i].iov_base = slots + (size_t)i * RX_SLOT;
        iov[i].iov_len = RX_SLOT;
    }
    ev.events = EPOLLIN;
    ev.data.u32 = UINT32_MAX;
    epoll_ctl(ep, EPOLL_CTL_ADD, cfg->stop_fd, &ev);
    for (uint32_t i = 0; i < cfg->nfd; i++) {
        if (cfg->gro)
            setsockopt(cfg->fds[i], SOL_UDP, UDP_GRO, &one, sizeof one);
        ev.events = EPOLLIN;
        ev.data.u32 = i;
        epoll_ctl(ep, EPOLL_CTL_ADD, cfg->fds[i], &ev);
    }
    while (!stop) {
        int n = epoll_wait(ep, evs, 256, 1000);
        for (int e = 0; e < n; e++) {
            uint32_t idx = evs[e].data.u32;
            if (idx == UINT32_MAX) {
                stop = 1;
                continue;
            }
            for (int round = 0; round < 16; round++) {
                int got, k;
                int64_t now;
                for (k = 0; k < RX_BATCH; k++) {
                    memset(&msgs[k].msg_hdr, 0, sizeof msgs[k].msg_hdr);
                    msgs[k].msg_hdr.msg_iov = &iov[k];
                    msgs[k].msg_hdr.msg_iovlen = 1;
                    msgs[k].msg_hdr.msg_control = ctl[k].buf;
                    msgs[k].msg_hdr.msg_controllen = sizeof ctl[k].buf;
                }
                got = recvmmsg(cfg->fds[idx], msgs, RX_BATCH, MSG_DONTWAIT, NULL);
                if (got <= 0)
                    break;
                out->calls++;
                now = mono_ns();
                if (!out->first_ns)
                    out->first_ns = now;
                out->last_ns = now;
                for (k = 0; k < got; k++) {
                    uint32_t len = msgs[k].msg_len, seg = len, before = (uint32_t)out->packets;
                    uint8_t *p = iov[k].iov_base;
                    struct msghdr *h = &msgs[k].msg_hdr;
                    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
                        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
                            int g;
                            memcpy(&g, CMSG_DATA(c), sizeof g);
                            if (g > 0)
                                seg = (uint32_t)g;
                        }
                    }
                    if (!seg)
                        seg = 1;
                    for (uint32_t off = 0; off < len || (len == 0 && off == 0); off += seg) {
                        account(out, p + off, len - off < seg ? len - off : seg, now);
                        if (len == 0)
                            break;
                    }
                    if (per_fd)
                        per_fd[idx] += (uint32_t)out->packets - before;
                }
                if (got < RX_BATCH)
                    break;
            }
        }
    }
    close(ep);
    free(slots);
    return 0;
}
