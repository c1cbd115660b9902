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
    double trs_ns;
};

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
    return p;
}

void msm_pacer_free(msm_pacer *p) { free(p); }

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

/* Sends packets [i, i+g) in one sendmmsg; returns how many the kernel took. */
static int send_group(msm_pacer *p, const unsigned char *const *pkts, const uint32_t *lengths, uint32_t g,
                      uint32_t ts_be) {
    struct mmsghdr msgs[MSM_PACER_MAX_GROUP];
    struct iovec iov[MSM_PACER_MAX_GROUP][2];
    unsigned char heads[MSM_PACER_MAX_GROUP][RTP_HEADER];
    memset(msgs, 0, sizeof(struct mmsghdr) * g);
    for (uint32_t j = 0; j < g; j++) {
        struct msghdr *h = &msgs[j].msg_hdr;
        h->msg_name = &p->dest;
        h->msg_namelen = p->dest_len;
        h->msg_iov = iov[j];
        if (p->cfg.patch_timestamp) {
            memcpy(heads[j], pkts[j], RTP_HEADER);
            memcpy(heads[j] + 4, &ts_be, 4);
            iov[j][0].iov_base = heads[j];
            iov[j][0].iov_len = RTP_HEADER;
            iov[j][1].iov_base = (void *)(pkts[j] + RTP_HEADER);
            iov[j][1].iov_len = lengths[j] - RTP_HEADER;
            h->msg_iovlen = 2;
        } else {
            iov[j][0].iov_base = (void *)pkts[j];
            iov[j][0].iov_len = lengths[j];
            h->msg_iovlen = 1;
        }
    }
    int sent = sendmmsg(p->fd, msgs, g, 0);
    return sent < 0 ? 0 : sent;
}

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

/* Sends packets [0, g) as one UDP GSO train of lengths[0]-byte segments (the last may be
 * shorter): the caller checked the lengths. Returns g, or -1 with errno. */
static int send_gso(msm_pacer *p, const unsigned char *const *pkts, const uint32_t *lengths, uint32_t g,
                    uint32_t ts_be) {
    struct iovec iov[2 * MSM_PACER_MAX_GROUP];
    unsigned char heads[MSM_PACER_MAX_GROUP][RTP_HEADER];
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } control;
    size_t n = 0;
    for (uint32_t j = 0; j < g; j++) {
        if (p->cfg.patch_timestamp) {
            memcpy(heads[j], pkts[j], RTP_HEADER);
            memcpy(heads[j] + 4, &ts_be, 4);
            iov[n++] = (struct iovec){.iov_base = heads[j], .iov_len = RTP_HEADER};
            iov[n++] = (struct iovec){.iov_base = (void *)(pkts[j] + RTP_HEADER), .iov_len = lengths[j] - RTP_HEADER};
        } else {
            iov[n++] = (struct iovec){.iov_base = (void *)pkts[j], .iov_len = lengths[j]};
        }
    }
    struct msghdr h = {.msg_name = &p->dest, .msg_namelen = p->dest_len, .msg_iov = iov, .msg_iovlen = n,
                       .msg_control = control.buf, .msg_controllen = sizeof(control.buf)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&h);
    cm->cmsg_level = IPPROTO_UDP;
    cm->cmsg_type = UDP_SEGMENT;
    cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    uint16_t seg = (uint16_t)lengths[0];
    memcpy(CMSG_DATA(cm), &seg, sizeof(seg));
    return sendmsg(p->fd, &h, 0) < 0 ? -1 : (int)g;
}

/* Sends a group: a GSO train where it can be one (equal segments, the last no longer, under
 * 64 kB), else sendmmsg. The first refusal of a train turns GSO off for the pacer. */
static int send_any(msm_pacer *p, const unsigned char *const *pkts, const uint32_t *lengths, uint32_t g,
                    uint32_t ts_be, msm_pacer_stats *out) {
    if (p->gso_ok && g > 1) {
        uint64_t total = 0;
        int equal = 1;
        for (uint32_t j = 0; j < g; j++) {
            total += lengths[j];
            if ((j + 1 < g && lengths[j] != lengths[0]) || lengths[j] > lengths[0])
                equal = 0;
        }
        if (equal && total <= 65000) {
            int rc = send_gso(p, pkts, lengths, g, ts_be);
            if (rc >= 0) {
                out->gso_sends++;
                return rc;
            }
            if (errno != EIO && errno != EINVAL && errno != ENOPROTOOPT && errno != EOPNOTSUPP)
                return 0;
            p->gso_ok = 0;   /* no GSO on this route or kernel: packets one by one from now on */
        }
    }
    return send_group(p, pkts, lengths, g, ts_be);
}

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

int msm_pacer_send_frame(msm_pacer *p, const unsigned char *buf, uint64_t buf_len, const uint32_t *lengths,
                         uint32_t n, int64_t frame, msm_pacer_stats *out) {
    if (!lengths_fit(p, buf_len, lengths, n)) {
        errno = EINVAL;
        return -1;
    }
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
    const unsigned char *pkts[MSM_PACER_MAX_GROUP];
    uint64_t offset = 0;
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
        now = wait_until(p, when, i == 0 ? p->cfg.frame_spin_ns : p->cfg.spin_ns, out);
        uint32_t g = 0;
        uint64_t off = offset;
        int64_t until = (now > due ? now : due) + (p->gso_ok ? p->cfg.group_window_ns : p->cfg.tolerance_ns);
        while (i + g < n && g < p->cfg.max_group && (g == 0 || msm_pacer_packet_time(p, f, i + g) <= until)) {
            pkts[g] = buf + off;
            off += lengths[i + g];
            g++;
        }
        int sent = send_any(p, pkts, lengths + i, g, ts_be, out);
        out->send_ns += clock_ns(p->cfg.clock_id) - now;
        out->packets_sent += (uint32_t)sent;
        out->send_errors += g - (uint32_t)sent;
        account(p, f, i, g, now, out);
        last_send = now;
        last_group = g;
        offset = off;
        i += g;
    }
    prctl(PR_SET_TIMERSLACK, old_slack > 0 ? old_slack : 50000, 0, 0, 0);
    out->cpu_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    return 0;
}
