/* ST 2110-20 (RFC 4175) per-packet work in C: depacketize from a UDP socket
 * straight into a frame buffer the caller supplies, and packetize a frame into
 * one contiguous buffer of packets (back to back, as msm.ext.pacer takes them) sent evenly spread (or handed to a
 * pacer). Python sees frames only. The pure-Python twin is msm.sdk.rfc4175;
 * both make the same packets and the same decisions. */
#ifndef MSM_ST2110_H
#define MSM_ST2110_H

#include <stddef.h>
#include <stdint.h>

#define MSM_ST2110_MAX_PACKET 9000
#define MSM_ST2110_BPM_DATA 1260

typedef struct {
    uint64_t packets;
    uint64_t bad_rtp;
    uint64_t bad_pt;
    uint64_t bad_ssrc;
    uint64_t bad_source;
    uint64_t bad_segment;
    uint64_t late;
    uint64_t lost;
    uint64_t frames_complete;
    uint64_t frames_incomplete;
    uint64_t recv_errors;
    uint64_t batches;
    uint64_t bytes;
} msm_st2110_rx_stats;

typedef struct {
    uint32_t timestamp;
    uint32_t packets;
    uint32_t lost;
    uint64_t bytes;
    int complete;
    int no_marker;
} msm_st2110_frame;

typedef struct {
    uint64_t packets_sent;
    uint64_t bytes_sent;
    uint64_t send_errors;
    uint64_t late_ns;
    uint64_t gso_sends;
    uint64_t gso_disabled;
} msm_st2110_tx_stats;

typedef struct msm_st2110_rx msm_st2110_rx;

msm_st2110_rx *msm_st2110_rx_new(int fd, uint32_t width, uint32_t height, uint32_t pg_bytes,
                                 uint32_t pg_pixels, int payload_type);
void msm_st2110_rx_free(msm_st2110_rx *rx);
void msm_st2110_rx_set_coalesce(msm_st2110_rx *rx, uint32_t us);
void msm_st2110_rx_set_ssrc(msm_st2110_rx *rx, int64_t ssrc);
int msm_st2110_rx_set_source(msm_st2110_rx *rx, int family, const uint8_t *addr, uint16_t port);
void msm_st2110_rx_stats_get(const msm_st2110_rx *rx, msm_st2110_rx_stats *out);
const char *msm_st2110_rx_last_error(const msm_st2110_rx *rx);
int msm_st2110_rx_push(msm_st2110_rx *rx, const uint8_t *pkt, size_t len, uint8_t *frame,
                       msm_st2110_frame *done);
int msm_st2110_rx_poll(msm_st2110_rx *rx, uint8_t *frame, int timeout_ms, msm_st2110_frame *done);
int msm_st2110_rx_flush(msm_st2110_rx *rx, msm_st2110_frame *done);

long msm_st2110_packetize(const uint8_t *frame, uint32_t width, uint32_t height, uint32_t pg_bytes,
                          uint32_t pg_pixels, uint32_t mtu, int mode /* 0 GPM, 1 BPM, 2 GPM line slices */, uint32_t seq, uint32_t timestamp,
                          uint32_t ssrc, int payload_type, uint8_t *out, size_t out_cap,
                          uint32_t *lens, size_t max_packets);
long msm_st2110_send(int fd, int family, const uint8_t *addr, uint16_t port, const uint8_t *buf,
                     const uint32_t *lens, size_t count, uint64_t spread_ns, int gso,
                     msm_st2110_tx_stats *stats);

#endif
