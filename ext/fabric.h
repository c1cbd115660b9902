/* msm libfabric link: whole media frames between proxies over RDM endpoints.
 *
 * One msm_fab is one libfabric RDM endpoint (tcp;ofi_rxm between nodes, shm on
 * one host) with one completion queue and one address vector. A frame travels
 * as ONE tagged message: a fixed header (group, sequence, timestamp, lengths),
 * the metadata padded to a multiple of 64 bytes, then the payload, sent
 * zero-copy from the caller's buffer.
 *
 * Flow control is by credits. Each endpoint grants every peer it added
 * `credits` receive buffers; a grant is a cumulative count ("you may have sent
 * me G frames in all"), carried by small control messages on the same
 * endpoint, so a lost, duplicated or reordered grant is harmless (the larger
 * count wins); grants name the incarnation of the endpoint they are for, so a
 * peer restarted at the same address starts afresh. A sender with no credit left for a peer refuses the frame for
 * that peer (counted as no_credit) rather than queueing it: a receiver that
 * stops reading costs its own frames, never the sender's memory or the other
 * peers' frames. Releasing a received frame hands its buffer back and returns
 * its credit. On shm one frame buffer is posted at a time, the last released
 * first (see RX_POSTED_SHM in fabric.c); other providers have all posted.
 *
 * A send the provider refuses for the moment (-FI_EAGAIN: shm still mapping a
 * new peer, a full transmit queue) is not dropped: it keeps its credit and its
 * transmit slot and is retried, in order per peer, on every msm_fab_poll and
 * msm_fab_send, for at most MSM_FAB_RETRY_MS after its first attempt. Only then
 * is it dropped (counted as drop_busy, reported as a SEND_ERROR event with
 * error FI_EAGAIN, its credit returned). The queue is bounded by the transmit
 * slots (credits x peers).
 *
 * Only peers added with msm_fab_add_peer count: every completion's source
 * address (FI_SOURCE) is checked, and frames or grants from anyone else are
 * dropped and counted. On shm each peer's frames leave from an endpoint of
 * their own (shm completes one endpoint's sends in order: a frozen peer would
 * hold up the others); its name is announced to the peer by a control message
 * from the endpoint the peer added, so the check still holds.
 *
 * Not thread-safe: one thread drives an endpoint (msm_fab_poll releases no
 * lock because it takes none). ext/build_fabric.py hands this header to cffi
 * (minus its preprocessor lines): keep it to declarations and integer #defines.
 */
#ifndef MSM_FABRIC_H
#define MSM_FABRIC_H

#include <stddef.h>
#include <stdint.h>

/* Event kinds returned by msm_fab_poll. */
#define MSM_FAB_EV_FRAME 1 /* a frame arrived in receive buffer `slot` (release it) */
#define MSM_FAB_EV_SENT 2 /* send `token` completed: its payload may be reused */
#define MSM_FAB_EV_SEND_ERROR 3 /* send `token` failed (`error`: a libfabric errno) */

/* msm_fab_send results (besides a negative errno). */
#define MSM_FAB_SENT 0
#define MSM_FAB_NO_CREDIT 1 /* the peer has no credit left for us (or has granted none yet) */
#define MSM_FAB_BUSY 2 /* not returned since retries exist (see MSM_FAB_QUEUED); kept for its number */
#define MSM_FAB_QUEUED 3 /* taken, the provider said "not now": retried by poll/send (MSM_FAB_RETRY_MS) */

/* How long a send the provider refuses with -FI_EAGAIN is retried before it is
 * dropped: six frame periods at 60 frames/s. shm maps a new peer within the
 * peer's next progress (a few ms; tens on a host loaded by busy-polling neighbours); a frame later than
 * this is better dropped than delivered. */
#define MSM_FAB_RETRY_MS 100

/* Bytes of the frame header on the wire, before the metadata. */
#define MSM_FAB_HEADER_BYTES 40

typedef struct msm_fab msm_fab;

typedef struct msm_fab_event {
    uint32_t kind;
    int32_t peer; /* the peer id (msm_fab_add_peer) */
    uint32_t slot; /* FRAME: the receive buffer (msm_fab_buffer, msm_fab_release) */
    int32_t error; /* SEND_ERROR: positive libfabric errno */
    uint64_t token; /* SENT / SEND_ERROR: msm_fab_send's token */
    uint32_t group;
    uint32_t meta_len;
    uint64_t seq;
    uint64_t timestamp;
    uint64_t payload_len;
    uint64_t payload_offset; /* in the buffer: the metadata is at MSM_FAB_HEADER_BYTES, padded to 64 */
} msm_fab_event;

typedef struct msm_fab_peer_stats {
    uint64_t tx_frames, tx_bytes; /* frames handed to the provider, payload bytes */
    uint64_t rx_frames, rx_bytes;
    uint64_t drop_no_credit; /* refused by msm_fab_send: no credit */
    uint64_t drop_busy; /* refused by the provider (-FI_EAGAIN) for longer than MSM_FAB_RETRY_MS */
    uint64_t drop_send_error; /* completed with an error */
    uint64_t rx_bad; /* arrived malformed (header, lengths, truncated) */
    uint64_t granted; /* cumulative grant the peer gave us */
    uint64_t sent; /* frames sent to the peer that count against the grant */
    uint64_t my_grant; /* cumulative grant we gave the peer */
    uint32_t tx_pending; /* sends not yet completed locally */
    uint32_t rx_held; /* the peer's frames held by the caller (not released) */
    uint64_t tx_retried; /* sends the provider refused at first (-FI_EAGAIN) and were retried */
    uint32_t tx_queued; /* of tx_pending, those waiting for a retry now */
    int64_t credits; /* granted - sent */
} msm_fab_peer_stats;

typedef struct msm_fab_stats {
    uint64_t rx_unknown_peer; /* frames from an address never added: dropped */
    uint64_t ctrl_unknown_peer; /* grants from an address never added: ignored */
    uint64_t ctrl_bad; /* malformed control messages */
    uint64_t cq_errors; /* completion errors of any kind */
    uint32_t rx_buffers; /* receive buffers (credits * max_peers) */
    uint32_t rx_posted; /* of which posted to the provider now */
    uint64_t rx_buffer_bytes; /* bytes of one receive buffer */
    int32_t peers;
    int32_t mr_local; /* the provider wants local registration (FI_MR_LOCAL) */
} msm_fab_stats;

/* An endpoint, or NULL with the reason in err. node/service: the address and
 * port to bind (tcp), NULL for the provider's choice (shm). */
msm_fab *msm_fab_open(const char *provider, const char *node, const char *service, uint64_t max_frame,
                      uint32_t max_meta, uint32_t credits, uint32_t max_peers, char *err, size_t errlen);
/* 0 if the provider offers an RDM endpoint with what msm_fab needs here; else the reason in err. */
int msm_fab_probe(const char *provider, char *err, size_t errlen);
/* The endpoint's address (fi_getname) into out (*len: its size in, the name's out); 0 or -errno. */
int msm_fab_getname(msm_fab *fab, uint8_t *out, size_t *len);
/* The peer id (>= 0) for a peer's address, or -errno with the reason in err. */
int msm_fab_add_peer(msm_fab *fab, const uint8_t *addr, size_t len, char *err, size_t errlen);
/* Stop taking frames from (and sending to) a peer; add_peer with its address takes it back. 0 or -errno. */
int msm_fab_remove_peer(msm_fab *fab, int peer);
/* One frame to a peer: MSM_FAB_SENT, MSM_FAB_QUEUED (both: taken), MSM_FAB_NO_CREDIT or -errno. The payload
 * must stay untouched until the SENT (or SEND_ERROR) event with the same token. */
int msm_fab_send(msm_fab *fab, int peer, uint32_t group, uint64_t seq, uint64_t timestamp,
                 const uint8_t *meta, uint32_t meta_len, const uint8_t *payload, uint64_t payload_len,
                 uint64_t token);
/* Progress the endpoint; up to max events; waits up to timeout_ms (0: none) for the first. */
int msm_fab_poll(msm_fab *fab, msm_fab_event *events, int max, int timeout_ms);
/* The receive buffer behind a FRAME event (header, metadata, payload). */
uint8_t *msm_fab_buffer(msm_fab *fab, uint32_t slot);
/* Repost a received frame's buffer and return its credit to the sender; 0 or -errno. */
int msm_fab_release(msm_fab *fab, uint32_t slot);
int msm_fab_peer_stats_get(msm_fab *fab, int peer, msm_fab_peer_stats *out);
void msm_fab_stats_get(msm_fab *fab, msm_fab_stats *out);
/* The completion queue's wait fd (FI_WAIT_FD), or -1 when the provider offers none. */
int msm_fab_fd(msm_fab *fab);
/* Close the endpoint; pending sends are cancelled (their payloads are free after this returns). */
void msm_fab_close(msm_fab *fab);

#endif
