/* The benchmark's C sender and receiver: the machine's limit, and the load
 * every forwarder under test gets.
 *
 * Packets are RTP (V=2, PT 96) of a fixed size; after the 12-byte header the
 * payload carries the send time (CLOCK_MONOTONIC, ns, 8 bytes) and the stream
 * index (4 bytes), so the receiver measures one-way latency per packet.
 *
 * bench/build.py hands this header to cffi as its declarations (minus the
 * preprocessor lines).
 */
#ifndef MSM_BLAST_H
#define MSM_BLAST_H

#include <stddef.h>
#include <stdint.h>

#define BLAST_HIST 20001 /* latency histogram: 1 us buckets to 20 ms, then one overflow bucket */

typedef struct blast_send_cfg {
    int fd; /* a UDP socket to send from */
    uint32_t ndest; /* destinations (127.0.0.1:port), one RTP stream each */
    const uint16_t *ports;
    uint32_t size; /* datagram size, >= 24 */
    double rate; /* packets/s over all streams; 0: as fast as possible */
    double duration; /* seconds */
    uint32_t gso; /* packets per UDP GSO super-datagram; 0 or 1: one datagram per packet */
    uint32_t batch; /* messages per sendmmsg */
    uint32_t ssrc_base;
} blast_send_cfg;

typedef struct blast_send_result {
    uint64_t packets, bytes, calls, errors;
    double elapsed;
} blast_send_result;

typedef struct blast_recv_cfg {
    uint32_t nfd;
    const int *fds; /* bound UDP sockets */
    int stop_fd; /* stop once this becomes readable */
    int gro; /* set UDP_GRO on the sockets */
} blast_recv_cfg;

typedef struct blast_recv_result {
    uint64_t packets, bytes, bad, calls;
    int64_t first_ns, last_ns; /* CLOCK_MONOTONIC of the first and last packet */
    uint64_t lat_count, lat_max_ns;
    double lat_sum_ns;
    uint64_t hist[BLAST_HIST];
} blast_recv_result;

/* Both return 0, or -1 with errno set. per_dest / per_fd get counts per index. */
int blast_send(const blast_send_cfg *cfg, uint64_t *per_dest, blast_send_result *out);
int blast_recv(const blast_recv_cfg *cfg, uint64_t *per_fd, blast_recv_result *out);

#endif
