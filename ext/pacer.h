/* ST 2110-21 sender pacing: one frame's packets sent each at its scheduled time.
 *
 * The schedule (ST 2110-21, "Virtual Receiver Buffer Model"): packet k of frame N
 * leaves at floor(TFRAME * (N*P*T + tro*P + (k - lead)*A) / (P*T)) ns of the clock,
 * with TFRAME = period_num / period_den ns, P packets per frame, T the raster's
 * total lines, tro its TRODEFAULT lines and A its active lines (gapped: A < T, no
 * packet in the vertical blanking; linear: A = T). The frame's RTP timestamp is
 * N * TFRAME on the 90 kHz clock (ST 2110-10).
 */
#ifndef MSM_PACER_H
#define MSM_PACER_H

#include <stdint.h>

/* Packets per sendmmsg at most: their headers and iovecs live on the sending thread's stack. */
#define MSM_PACER_MAX_GROUP 64

typedef struct msm_pacer msm_pacer;

typedef struct {
    int64_t period_num;      /* TFRAME = period_num / period_den ns */
    int64_t period_den;
    uint32_t packets;        /* packets per frame */
    uint32_t total_lines;    /* 1125 or 750 */
    uint32_t active_lines;   /* 1080 or 720 (gapped); total_lines (linear) */
    uint32_t tro_lines;      /* TRODEFAULT: 43 or 28 */
    uint32_t lead;           /* packets sent ahead of the read schedule */
    uint32_t max_group;      /* packets sent back to back at most (1..MSM_PACER_MAX_GROUP) */
    uint32_t catchup_permille; /* when late, groups follow each other at least this share of their TRS */
    int64_t spin_ns;         /* busy-wait this long before a due time instead of sleeping */
    int64_t frame_spin_ns;   /* ... and this long before a frame's first packet */
    int64_t tolerance_ns;    /* packets due within this of now go in the same group */
    int clock_id;            /* CLOCK_TAI or CLOCK_REALTIME */
    int patch_timestamp;     /* write the frame's RTP timestamp into each packet's header */
    int gso;                 /* send a group as one UDP GSO train (one trip through the stack) */
    int64_t group_window_ns; /* with gso: packets due within this after a group's first go with it */
} msm_pacer_config;

typedef struct {
    int64_t frame;           /* N: the frame's index on the grid */
    uint32_t rtp_timestamp;
    uint32_t packets_sent;
    uint32_t send_errors;
    uint32_t groups;         /* sendmmsg or GSO sends */
    uint32_t gso_sends;      /* of which GSO trains */
    uint32_t sleeps;         /* clock_nanosleep calls */
    uint32_t late_packets;   /* sent more than lead * TRS after their time: the receiver's margin gone */
    int64_t first_due_ns;    /* when its first packet was due */
    int64_t max_late_ns;     /* the latest any packet left after its time */
    int64_t sum_late_ns;
    int64_t cpu_ns;          /* the calling thread's CPU time in send_frame */
    int64_t send_ns;         /* of which in sendmmsg (wall clock) */
    int64_t skipped_frames;  /* grid frames passed over because the call came too late for them */
} msm_pacer_stats;

msm_pacer *msm_pacer_new(int fd, int family, const unsigned char *addr, uint16_t port, uint32_t scope,
                         const msm_pacer_config *config);
void msm_pacer_free(msm_pacer *pacer);
int64_t msm_pacer_packet_time(const msm_pacer *pacer, int64_t frame, int64_t index);
int64_t msm_pacer_frame_of(const msm_pacer *pacer, int64_t t_ns);
uint32_t msm_pacer_rtp_timestamp(const msm_pacer *pacer, int64_t frame);
int64_t msm_pacer_now(const msm_pacer *pacer);
/* Sends n packets (lengths[i] bytes each, back to back in buf) as frame `frame`, or
 * (frame < 0) the first grid frame after the previous one whose first packet is
 * still ahead. n becomes the pacer's packets per frame (TRS follows). Returns 0,
 * or -1 with errno (EINVAL: bad lengths). */
int msm_pacer_send_frame(msm_pacer *pacer, const unsigned char *buf, uint64_t buf_len,
                         const uint32_t *lengths, uint32_t n, int64_t frame, msm_pacer_stats *out);

#endif
