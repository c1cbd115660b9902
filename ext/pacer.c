/* ST 2110-21 sender pacing (see pacer.h for the schedule).
 *
 * Each packet leaves at its time on the read schedule less `lead` packets
 * (ST 2110-21, "Virtual Receiver Buffer Model": the receiver's buffer then holds
 * about lead packets of margin and never runs empty). The thread sleeps with
 * clock_nanosleep(TIMER_ABSTIME) until spin_ns before a due time (frame_spin_ns
 * before a frame's first packet, after the vertical blanking) and busy-waits
 * the rest; packets due within tolerance_ns of now leave together in one
 * sendmmsg, at most max_group of them, so the burst the network sees stays under
 * the network compatibility model's CMAX. A call that runs late does not dump
 * its backlog: each group waits catchup_permille of its packets' TRS after the
 * previous one, so the bucket (drained at TRS / 1.1) does not fill while the
 * sender catches up; lateness is measured and reported per frame.
 */
#define _GNU_SOURCE
#include "pacer.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>

#define RTP_HEADER 12

struct msm_pacer {
    int fd;
    struct sockaddr_storage dest;
    socklen_t dest_len;
    msm_pacer_config cfg;
    int64_t next_frame;      /* the grid frame after the last one sent (-1: none yet) */
    int gso_ok;              /* cfg.gso, until the kernel refuses a train */
    int connected;           /* fd is connected to dest: no address per send (no route lookup per send) */
    double trs_ns;
    /* Bucket mode (msm_pacer_set_bucket; wide senders): trains leave when the network
     * compatibility model's bucket has room for them, with no spinning. */
    uint32_t cmax;           /* 0: the read-schedule loop instead */
    uint32_t ahead;          /* packets a train may run ahead of the read schedule at most */
    int64_t wake_early_max_ns;
    double wake_early_ns;    /* how early a sleep ends before a train's time: the timer's usual lateness */
    uint32_t bucket;         /* the model's content after the last train ... */
    double bucket_ref;       /* ... and when its current drain started (the analyser's whole-packet drain) */
};

int msm_pacer_set_bucket(msm_pacer *p, uint32_t cmax, uint32_t ahead, int64_t wake_early_max_ns);
int msm_pacer_send_parts(msm_pacer *p, unsigned char *heads, size_t head_stride, const uint32_t *head_lens,
                         const unsigned char *frame, uint64_t frame_len, const uint32_t *pay_offs,
                         const uint32_t *pay_lens, uint32_t n, int64_t frame_index, uint32_t hurry,
                         msm_pacer_stats *out);

typedef __int128 i128;

static int64_t floor_div(i128 a, i128 b) {
    i128 q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0)))
        q -= 1;
    return (int64_t)q;
}

static int64_t clock_ns(int clock_id) {
    struct timespec ts;
    clock_gettime(clock_id, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t msm_pacer_now(const msm_pacer *p) { return clock_ns(p->cfg.clock_id); }

int64_t msm_pacer_packet_time(const msm_pacer *p, int64_t frame, int64_t index) {
    const msm_pacer_config *c = &p->cfg;
    i128 x = (i128)frame * c->packets * c->total_lines + (i128)c->tro_lines * c->packets
             + ((i128)index - c->lead) * c->active_lines;
    return floor_div((i128)c->period_num * x, (i128)c->period_den * c->packets * c->total_lines);
}

int64_t msm_pacer_frame_of(const msm_pacer *p, int64_t t_ns) {
    return floor_div((i128)t_ns * p->cfg.period_den, p->cfg.period_num);
}

uint32_t msm_pacer_rtp_timestamp(const msm_pacer *p, int64_t frame) {
    i128 ticks = (i128)frame * p->cfg.period_num * 90000;
    return (uint32_t)((uint64_t)floor_div(ticks, (i128)p->cfg.period_den * 1000000000LL) & 0xFFFFFFFFu);
}

msm_pacer *msm_pacer_new(int fd, int family, const unsigned char *addr, uint16_t port, uint32_t scope,
                         const msm_pacer_config *config) {
    const msm_pacer_config *c = config;
    if (c->period_num <= 0 || c->period_den <= 0 || c->packets == 0 || c->total_lines == 0
        || c->active_lines == 0 || c->active_lines > c->total_lines || c->max_group == 0
        || c->max_group > MSM_PACER_MAX_GROUP || (family != AF_INET && family != AF_INET6)) {
        errno = EINVAL;
        return NULL;
    }
    msm_pacer *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->fd = fd;
    p->cfg = *c;
    p->next_frame = -1;
    p->gso_ok = c->gso;
    p->trs_ns = (double)c->period_num * c->active_lines / ((double)c->period_den * c->packets * c->total_lines);
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&p->dest;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        memcpy(&sin->sin_addr, addr, 4);
        p->dest_len = sizeof(*sin);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&p->dest;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        memcpy(&sin6->sin6_addr, addr, 16);
        sin6->sin6_scope_id = scope;
        p->dest_len = sizeof(*sin6);
    }
    struct sockaddr_storage peer;
    socklen_t peer_len = sizeof(peer);
    if (getpeername(fd, (struct sockaddr *)&peer, &peer_len) == 0 && peer_len == p->dest_len
        && peer.ss_family == family) {
        if (family == AF_INET) {
            const struct sockaddr_in *a = (const struct sockaddr_in *)&peer, *b = (const struct sockaddr_in *)&p->dest;
            p->connected = a->sin_port == b->sin_port && !memcmp(&a->sin_addr, &b->sin_addr, 4);
        } else {
            const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&peer;
            const struct sockaddr_in6 *b = (const struct sockaddr_in6 *)&p->dest;
            p->connected = a->sin6_port == b->sin6_port && !memcmp(&a->sin6_addr, &b->sin6_addr, 16);
        }
    }
    return p;
}

void msm_pacer_free(msm_pacer *p) { free(p); }

/* cmax: the bucket's bound for our own trains (a packet under CMAX leaves room for the capture's
 * jitter); ahead: VRX at most about this, well under VRX_FULL (and at least the lead). */
int msm_pacer_set_bucket(msm_pacer *p, uint32_t cmax, uint32_t ahead, int64_t wake_early_max_ns) {
    if (cmax != 0 && (cmax < p->cfg.max_group || ahead < p->cfg.lead || wake_early_max_ns < 0)) {
        errno = EINVAL;
        return -1;
    }
    p->cmax = cmax;
    p->ahead = ahead;
    p->wake_early_max_ns = wake_early_max_ns;
    p->wake_early_ns = 0;
    return 0;
}

/* Sleeps (then spins) until the clock reads `when`; returns the time it read. */
static int64_t wait_until(msm_pacer *p, int64_t when, int64_t spin_ns, msm_pacer_stats *out) {
    int64_t now = clock_ns(p->cfg.clock_id);
    if (when - now > spin_ns) {
        int64_t wake = when - spin_ns;
        struct timespec ts = {.tv_sec = wake / 1000000000LL, .tv_nsec = wake % 1000000000LL};
        while (clock_nanosleep(p->cfg.clock_id, TIMER_ABSTIME, &ts, NULL) == EINTR) {
        }
        out->sleeps++;
        now = clock_ns(p->cfg.clock_id);
    }
    while (now < when) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        now = clock_ns(p->cfg.clock_id);
    }
    return now;
}

static int64_t choose_frame(msm_pacer *p, int64_t frame, int64_t now, msm_pacer_stats *out) {
    if (frame >= 0) {
        p->next_frame = frame + 1;
        return frame;
    }
    int64_t n = msm_pacer_frame_of(p, now);
    if (p->next_frame > n)
        n = p->next_frame;
    /* the first packet must still be ahead, with time to get to it */
    while (msm_pacer_packet_time(p, n, 0) < now + p->cfg.spin_ns)
        n++;
    if (p->next_frame >= 0)
        out->skipped_frames = n - p->next_frame;
    p->next_frame = n + 1;
    return n;
}

/* A frame's packets: back to back in buf (lengths), or (heads != NULL) the frame form,
 * packet k its header at heads + k * head_stride then its payload, a span of the frame. */
typedef struct {
    const unsigned char *buf;
    const uint32_t *lengths;
    unsigned char *heads;   /* written: each header gets the frame's RTP timestamp in place */
    size_t head_stride;
    const uint32_t *head_lens;
    const unsigned char *frame;
    const uint32_t *pay_offs;
    const uint32_t *pay_lens;
} source;

static uint32_t packet_len(const source *s, uint32_t k) {
    return s->heads ? s->head_lens[k] + s->pay_lens[k] : s->lengths[k];
}

/* The iovecs of packets [i, i+g) (off: packet i's offset in buf), two a packet (one for back to
 * back packets whose timestamp stays); heads: room for g RTP headers with the timestamp written. */
static size_t gather(const msm_pacer *p, const source *s, uint32_t i, uint32_t g, uint64_t off, uint32_t ts_be,
                     struct iovec *iov, unsigned char (*heads)[RTP_HEADER]) {
    size_t n = 0;
    for (uint32_t j = 0; j < g; j++) {
        uint32_t k = i + j;
        if (s->heads) {
            unsigned char *h = s->heads + k * s->head_stride;
            if (p->cfg.patch_timestamp)
                memcpy(h + 4, &ts_be, 4);
            iov[n++] = (struct iovec){.iov_base = h, .iov_len = s->head_lens[k]};
            iov[n++] = (struct iovec){.iov_base = (void *)(s->frame + s->pay_offs[k]), .iov_len = s->pay_lens[k]};
        } else if (p->cfg.patch_timestamp) {
            const unsigned char *pkt = s->buf + off;
            memcpy(heads[j], pkt, RTP_HEADER);
            memcpy(heads[j] + 4, &ts_be, 4);
            iov[n++] = (struct iovec){.iov_base = heads[j], .iov_len = RTP_HEADER};
            iov[n++] = (struct iovec){.iov_base = (void *)(pkt + RTP_HEADER), .iov_len = s->lengths[k] - RTP_HEADER};
        } else {
            iov[n++] = (struct iovec){.iov_base = (void *)(s->buf + off), .iov_len = s->lengths[k]};
        }
        if (!s->heads)
            off += s->lengths[k];
    }
    return n;
}

/* Sends packets [i, i+g) in one sendmmsg; returns how many the kernel took. */
static int send_group(msm_pacer *p, const source *s, uint32_t i, uint32_t g, uint64_t off, uint32_t ts_be) {
    struct mmsghdr msgs[MSM_PACER_MAX_GROUP];
    struct iovec iov[2 * MSM_PACER_MAX_GROUP];
    unsigned char heads[MSM_PACER_MAX_GROUP][RTP_HEADER];
    size_t n = gather(p, s, i, g, off, ts_be, iov, heads), per = n / g;
    memset(msgs, 0, sizeof(struct mmsghdr) * g);
    for (uint32_t j = 0; j < g; j++) {
        struct msghdr *h = &msgs[j].msg_hdr;
        h->msg_name = p->connected ? NULL : &p->dest;
        h->msg_namelen = p->connected ? 0 : p->dest_len;
        h->msg_iov = iov + j * per;
        h->msg_iovlen = per;
    }
    int sent = sendmmsg(p->fd, msgs, g, 0);
    return sent < 0 ? 0 : sent;
}

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

/* Sends packets [i, i+g) as one UDP GSO train of packet i's size (the last may be shorter):
 * the caller checked the lengths. Returns g, or -1 with errno. */
static int send_gso(msm_pacer *p, const source *s, uint32_t i, uint32_t g, uint64_t off, uint32_t ts_be) {
    struct iovec iov[2 * MSM_PACER_MAX_GROUP];
    unsigned char heads[MSM_PACER_MAX_GROUP][RTP_HEADER];
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } control;
    size_t n = gather(p, s, i, g, off, ts_be, iov, heads);
    struct msghdr h = {.msg_name = p->connected ? NULL : &p->dest, .msg_namelen = p->connected ? 0 : p->dest_len,
                       .msg_iov = iov, .msg_iovlen = n,
                       .msg_control = control.buf, .msg_controllen = sizeof(control.buf)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&h);
    cm->cmsg_level = IPPROTO_UDP;
    cm->cmsg_type = UDP_SEGMENT;
    cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    uint16_t seg = (uint16_t)packet_len(s, i);
    memcpy(CMSG_DATA(cm), &seg, sizeof(seg));
    return sendmsg(p->fd, &h, 0) < 0 ? -1 : (int)g;
}

/* Sends a group: a GSO train where it can be one (equal segments, the last no longer, under
 * 64 kB), else sendmmsg. The first refusal of a train turns GSO off for the pacer. */
static int send_any(msm_pacer *p, const source *s, uint32_t i, uint32_t g, uint64_t off, uint32_t ts_be,
                    msm_pacer_stats *out) {
    if (p->gso_ok && g > 1) {
        uint64_t total = 0;
        uint32_t first = packet_len(s, i);
        int equal = 1;
        for (uint32_t j = 0; j < g; j++) {
            uint32_t len = packet_len(s, i + j);
            total += len;
            if ((j + 1 < g && len != first) || len > first)
                equal = 0;
        }
        if (equal && total <= 65000) {
            int rc = send_gso(p, s, i, g, off, ts_be);
            if (rc >= 0) {
                out->gso_sends++;
                return rc;
            }
            if (errno != EIO && errno != EINVAL && errno != ENOPROTOOPT && errno != EOPNOTSUPP)
                return 0;
            p->gso_ok = 0;   /* no GSO on this route or kernel: packets one by one from now on */
        }
    }
    return send_group(p, s, i, g, off, ts_be);
}

/* Packets [i, i+g) went at `now`: counted, and the offset of packet i+g in buf returned. */
static uint64_t sent_group(msm_pacer *p, const source *s, int64_t f, uint32_t i, uint32_t g, uint64_t off,
                           int sent, int64_t now, msm_pacer_stats *out);

/* The packets fit the buffer, and each holds an RTP header if its timestamp is to be written. */
static int lengths_fit(const msm_pacer *p, uint64_t buf_len, const uint32_t *lengths, uint32_t n) {
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (p->cfg.patch_timestamp && lengths[i] < RTP_HEADER)
            return 0;
        total += lengths[i];
    }
    return total <= buf_len;
}

/* Lateness of packets [i, i+g) of frame f, sent at `now`. */
static void account(const msm_pacer *p, int64_t f, uint32_t i, uint32_t g, int64_t now, msm_pacer_stats *out) {
    const double margin = p->trs_ns * p->cfg.lead;
    out->groups++;
    for (uint32_t j = 0; j < g; j++) {
        int64_t late = now - msm_pacer_packet_time(p, f, i + j);
        if (late < 0)
            late = 0;
        out->sum_late_ns += late;
        if (late > out->max_late_ns)
            out->max_late_ns = late;
        if ((double)late > margin)
            out->late_packets++;   /* past the receiver's margin: its buffer ran dry */
    }
}

static uint64_t sent_group(msm_pacer *p, const source *s, int64_t f, uint32_t i, uint32_t g, uint64_t off,
                           int sent, int64_t now, msm_pacer_stats *out) {
    out->send_ns += clock_ns(p->cfg.clock_id) - now;
    out->packets_sent += (uint32_t)sent;
    out->send_errors += g - (uint32_t)sent;
    account(p, f, i, g, now, out);
    if (!s->heads)
        for (uint32_t j = 0; j < g; j++)
            off += s->lengths[i + j];
    return off;
}

/* ------------------------------------------------------------------ bucket mode
 * A wide sender (msm_pacer_set_bucket) keeps the network compatibility model's bucket
 * itself, as the analyser does (one packet in per packet sent, one out per TDRAIN = TRS / 1.1,
 * whole packets, a drain starting when a packet enters the empty bucket), and sends each
 * train of max_group packets as soon as the bucket has room for it, but no packet more than
 * `ahead` packets before the read schedule and none before the frame's first packet time.
 * So Cinst stays within cmax by construction, and a timer that wakes late costs no
 * compliance: the bucket drained meanwhile, the train goes at once, and the sender runs up to
 * 10% faster than the read schedule (BETA) until it is ahead again. The thread sleeps until a
 * train's time less the timer's usual lateness (a running median) and spins only the
 * rest of an early wake: a train every ~16 TRS costs one timer wake, no busy-wait. */

static void drain(msm_pacer *p, int64_t now, double tdrain) {
    if (p->bucket > 0) {
        double d = ((double)now - p->bucket_ref) / tdrain;
        uint32_t out = d <= 0 ? 0 : d >= (double)p->bucket ? p->bucket : (uint32_t)d;
        p->bucket -= out;
        p->bucket_ref += out * tdrain;
    }
    if (p->bucket == 0)
        p->bucket_ref = (double)now;
}

/* Sleeps until about `when` (the timer's usual lateness early), spins the rest; the time read. */
static int64_t nap(msm_pacer *p, int64_t when, msm_pacer_stats *out) {
    int64_t now = clock_ns(p->cfg.clock_id);
    int64_t wake = when - (int64_t)p->wake_early_ns;
    if (wake - now > p->cfg.spin_ns) {
        struct timespec ts = {.tv_sec = wake / 1000000000LL, .tv_nsec = wake % 1000000000LL};
        while (clock_nanosleep(p->cfg.clock_id, TIMER_ABSTIME, &ts, NULL) == EINTR) {
        }
        out->sleeps++;
        now = clock_ns(p->cfg.clock_id);
        /* the median of the timer's lateness, in 1 us steps: a stall of milliseconds
         * moves it by one step, not by the stall (the lower quartile left more frames
         * late: 16-19 of 19 frames wide against 17-19, at the same CPU) */
        double e = p->wake_early_ns + (now - wake < p->wake_early_ns ? -1000.0 : 1000.0);
        p->wake_early_ns = e < 0 ? 0 : e > (double)p->wake_early_max_ns ? (double)p->wake_early_max_ns : e;
    }
    while (now < when) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        now = clock_ns(p->cfg.clock_id);
    }
    return now;
}

/* hurry > 1: a frame the sender is behind with goes now, the bucket drained that many times faster
 * (see msm_pacer_send_parts). */
static void send_bucket(msm_pacer *p, int64_t f, const source *s, uint32_t n, uint32_t ts_be, uint32_t hurry,
                        msm_pacer_stats *out) {
    const double tdrain = p->trs_ns / 1.1 / (hurry > 1 ? hurry : 1);
    const uint32_t cmax = p->cmax ? p->cmax : p->cfg.max_group;
    const uint32_t skip = hurry > 1 ? n : p->ahead - p->cfg.lead;   /* packet_time: the read schedule less lead */
    uint64_t off = 0;
    uint32_t i = 0;
    while (i < n) {
        uint32_t g = n - i < p->cfg.max_group ? n - i : p->cfg.max_group;
        uint32_t last = i + g - 1;
        int64_t now = clock_ns(p->cfg.clock_id);
        int64_t when = hurry > 1 ? now : msm_pacer_packet_time(p, f, last > skip ? last - skip : 0);
        drain(p, now, tdrain);
        if (p->bucket + g > cmax) {
            int64_t room = (int64_t)(p->bucket_ref + (p->bucket + g - cmax) * tdrain) + 1;
            if (room > when)
                when = room;
        }
        if (when > now) {
            now = nap(p, when, out);
            drain(p, now, tdrain);
        }
        int sent = send_any(p, s, i, g, off, ts_be, out);
        off = sent_group(p, s, f, i, g, off, sent, now, out);
        /* The train reached the wire between `now` and the send's return (`back`; on loopback
         * the send also does the receiver's work). What the bucket held drains from `now` on as
         * counted; if it would be empty by `back`, the train may have found it empty and started
         * a drain of its own, as late as `back`: that is assumed, so the bucket never drains
         * faster here than in a capture (a preempted send included). */
        int64_t back = clock_ns(p->cfg.clock_id);
        if (p->bucket == 0 || p->bucket_ref + p->bucket * tdrain <= (double)back) {
            p->bucket = 0;
            p->bucket_ref = (double)back;
        }
        p->bucket += g;
        i += g;
    }
}

/* The read-schedule sender (narrow, linear): each group when its first packet is due. */
static void send_schedule(msm_pacer *p, int64_t f, const source *s, uint32_t n, uint32_t ts_be,
                          msm_pacer_stats *out) {
    uint64_t off = 0;
    int64_t last_send = 0;
    uint32_t last_group = 0;
    uint32_t i = 0;
    while (i < n) {
        int64_t due = msm_pacer_packet_time(p, f, i);
        int64_t when = due - p->cfg.tolerance_ns;
        if (last_group) {
            int64_t earliest = last_send + (int64_t)(last_group * p->trs_ns * p->cfg.catchup_permille / 1000.0);
            if (earliest > when)
                when = earliest;
        }
        /* A frame's first packet follows the longest sleep: wake earlier for it. */
        int64_t now = wait_until(p, when, i == 0 ? p->cfg.frame_spin_ns : p->cfg.spin_ns, out);
        uint32_t g = 1;
        int64_t until = (now > due ? now : due) + (p->gso_ok ? p->cfg.group_window_ns : p->cfg.tolerance_ns);
        while (i + g < n && g < p->cfg.max_group && msm_pacer_packet_time(p, f, i + g) <= until)
            g++;
        int sent = send_any(p, s, i, g, off, ts_be, out);
        off = sent_group(p, s, f, i, g, off, sent, now, out);
        last_send = now;
        last_group = g;
        i += g;
    }
}

static int send_source(msm_pacer *p, const source *s, uint32_t n, int64_t frame, uint32_t hurry,
                       msm_pacer_stats *out) {
    memset(out, 0, sizeof(*out));
    if (n != p->cfg.packets) {   /* NPACKETS is the frame's: its TRS follows */
        p->cfg.packets = n;
        p->trs_ns = (double)p->cfg.period_num * p->cfg.active_lines
                    / ((double)p->cfg.period_den * n * p->cfg.total_lines);
    }
    int64_t cpu0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    int old_slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
    prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0);   /* nanosleep wakes on time, not 50 us late */

    int64_t now = clock_ns(p->cfg.clock_id);
    int64_t f = choose_frame(p, frame, now, out);
    out->frame = f;
    out->rtp_timestamp = msm_pacer_rtp_timestamp(p, f);
    out->first_due_ns = msm_pacer_packet_time(p, f, 0);
    uint32_t ts_be = htonl(out->rtp_timestamp);
    if (p->cmax || hurry > 1)
        send_bucket(p, f, s, n, ts_be, hurry, out);
    else
        send_schedule(p, f, s, n, ts_be, out);
    if (hurry > 1) {   /* outside the receiver model: every packet counts as a frame period late */
        int64_t period = (int64_t)(p->cfg.period_num / p->cfg.period_den);
        out->late_packets = n;
        if (out->max_late_ns < period)
            out->max_late_ns = period;
    }
    prctl(PR_SET_TIMERSLACK, old_slack > 0 ? old_slack : 50000, 0, 0, 0);
    out->cpu_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    return 0;
}

int msm_pacer_send_frame(msm_pacer *p, const unsigned char *buf, uint64_t buf_len, const uint32_t *lengths,
                         uint32_t n, int64_t frame, msm_pacer_stats *out) {
    if (!lengths_fit(p, buf_len, lengths, n)) {
        errno = EINVAL;
        return -1;
    }
    source s = {.buf = buf, .lengths = lengths};
    return send_source(p, &s, n, frame, 0, out);
}

/* The frame form: packet k is heads[k * head_stride .. + head_lens[k]] (its RTP header first;
 * the frame's timestamp is written into it) then frame[pay_offs[k] .. + pay_lens[k]].
 * hurry > 1: the caller is frames behind (its queue fills): the frame goes at once, on the grid
 * frame given, in trains of max_group under a bucket drained `hurry` times faster than the
 * model's; it is outside the model, and its stats say so (every packet a frame period late). */
int msm_pacer_send_parts(msm_pacer *p, unsigned char *heads, size_t head_stride, const uint32_t *head_lens,
                         const unsigned char *frame, uint64_t frame_len, const uint32_t *pay_offs,
                         const uint32_t *pay_lens, uint32_t n, int64_t frame_index, uint32_t hurry,
                         msm_pacer_stats *out) {
    for (uint32_t k = 0; k < n; k++) {
        if (head_lens[k] < RTP_HEADER || head_lens[k] > head_stride
            || (uint64_t)pay_offs[k] + pay_lens[k] > frame_len) {
            errno = EINVAL;
            return -1;
        }
    }
    source s = {.heads = heads, .head_stride = head_stride, .head_lens = head_lens, .frame = frame,
                .pay_offs = pay_offs, .pay_lens = pay_lens};
    return send_source(p, &s, n, frame_index, hurry, out);
}
