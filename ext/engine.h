/* msm native engine: the RTP proxy's packet path in C.
 *
 * One engine is one thread (started by msm_engine_new) that owns an epoll set
 * of flow sockets. Python creates flows and legs and publishes leg sets; the
 * thread receives with recvmmsg, measures each RTP packet (RFC 3550 A.1/A.8),
 * splices SSRC/sequence/timestamp across upstream restarts, and fans the
 * packets out with sendmmsg straight from its receive buffers, as UDP GSO
 * super-datagrams where the kernel offers them.
 *
 * Sharing between the Python thread and the engine thread:
 *  - a flow's leg set is an immutable snapshot, swapped with one atomic store;
 *    replaced snapshots, removed legs and closed flows are "retired" and freed
 *    by the engine thread at the top of its loop, where it holds no pointers
 *    (a quiescent point), so updates never stop or race the traffic;
 *  - counters have a single writer (the engine thread) and are read with
 *    relaxed atomic loads; the RTP statistics of a flow are read under a
 *    sequence lock, so Python always sees one consistent batch boundary.
 *
 * ext/build.py hands this header to cffi as its declarations (minus the
 * preprocessor lines), so Python and C cannot disagree about a layout. Keep it
 * to plain declarations and integer #defines.
 */
#ifndef MSM_ENGINE_H
#define MSM_ENGINE_H

#include <stddef.h>
#include <stdint.h>

/* Engine feature flags (msm_engine_new's `want`, msm_engine_features). */
#define MSM_FEATURE_GSO 1 /* UDP_SEGMENT on send */
#define MSM_FEATURE_GRO 2 /* UDP_GRO on receive */
#define MSM_FEATURE_TIMESTAMPS 4 /* kernel receive timestamps for jitter */
#define MSM_FEATURE_SRTP 8 /* libsrtp2 loaded (msm_srtp_load): SRTP on flows and legs */
#define MSM_FEATURE_SRTP_GCM 16 /* and it does AEAD_AES_128_GCM (built on OpenSSL or NSS) */
/* SRTP profiles (msm_flow_set_srtp, msm_leg_set_srtp): */
#define MSM_SRTP_AES_CM_128_HMAC_SHA1_80 1 /* RFC 3711: 16-byte key + 14-byte salt, 10-byte tag */
#define MSM_SRTP_AEAD_AES_128_GCM 2 /* RFC 7714: 16-byte key + 12-byte salt, 16-byte tag */

typedef struct msm_engine msm_engine;
typedef struct msm_flow msm_flow;
typedef struct msm_leg msm_leg;

/* RFC 3550 A.1/A.8 receiver statistics of one source. */
typedef struct msm_rtpstats {
    uint32_t clock_rate; /* 0: no jitter */
    uint32_t min_sequential;
    uint32_t started;
    uint32_t probation;
    uint32_t base_seq;
    uint32_t max_seq;
    uint32_t bad_seq;
    uint32_t has_last;
    uint64_t cycles;
    int64_t received; /* in the current sequence space, duplicates included */
    uint64_t seen_lo, seen_hi; /* bit i: (max_seq - i) arrived, i < 100 */
    double jitter; /* timestamp units */
    int64_t last_arrival_ns;
    uint32_t last_ts;
    uint32_t pad_;
    uint64_t duplicates, reordered, restarts;
    uint64_t gen; /* +1 whenever a sequence space starts (priors reset) */
} msm_rtpstats;

/* A consistent snapshot of a flow's ingress side. */
typedef struct msm_flow_stats {
    uint64_t packets_received, bytes_received;
    uint64_t dropped_invalid, dropped_from_viewers, source_changes;
    uint64_t dropped_wrong_source, dropped_wrong_ssrc;
    uint64_t srtp_errors; /* failed SRTP authentication or replay checks */
    int64_t lost_before, expected_before;
    uint32_t ssrc, has_ssrc, out_ssrc, has_out_ssrc;
    uint32_t seq_offset, ts_offset;
    /* What viewers were sent (after splicing): the first and the latest packet's
     * sequence number and timestamp, once has_out_info (RTSP RTP-Info). */
    uint32_t has_out_info, first_out_seq, first_out_ts, last_out_seq, last_out_ts, pad_out_;
    int64_t received, expected; /* the current source's sequence space */
    uint64_t extended_highest;
    uint64_t duplicates, reordered, restarts, gen;
    double jitter; /* timestamp units */
    /* not under the sequence lock: */
    uint64_t packets_forwarded, dropped_backlog, socket_errors, batches;
} msm_flow_stats;

typedef struct msm_leg_stats {
    uint64_t packets_sent, bytes_sent, send_errors, dropped_backlog, gso_sends;
    uint64_t mtu_exceeded; /* refused with EMSGSIZE: over the path MTU (never fragmented) */
    uint32_t gso_disabled, resolved;
} msm_leg_stats;

typedef struct msm_engine_info {
    uint64_t loops, events, reclaimed, coalesced;
    uint32_t features, flows;
} msm_engine_info;

/* SRTP's library, for the whole process: resolves libsrtp2's functions from
 * `path` (a shared object exporting srtp_*, e.g. pylibsrtp's module built on
 * OpenSSL), else from the system's libsrtp2.so.1, and initialises it. The
 * first success decides for good; later calls change nothing and return 0.
 * 0 on success (err then holds why `path` was passed over, if it was); -1
 * with the reasons in err. Engines started after it report MSM_FEATURE_SRTP. */
int msm_srtp_load(const char *path, char *err, size_t errlen);
/* The library in use ("" before msm_srtp_load succeeded). */
const char *msm_srtp_library(void);

/* Engine: starts its thread. NULL on failure with a message in err. */
msm_engine *msm_engine_new(int want, char *err, size_t errlen);
int msm_engine_features(msm_engine *e);
/* Interrupt moderation: when packets keep arriving faster than one per
 * `usec`, the thread waits that long before looking again, so it wakes once
 * per window instead of once per packet and sends bigger GSO runs. Sparse
 * traffic is never delayed. 0 turns it off. */
void msm_engine_set_coalesce(msm_engine *e, uint32_t usec);
void msm_engine_info_get(msm_engine *e, msm_engine_info *out);
/* Stops the thread and frees every flow and leg still attached. */
void msm_engine_free(msm_engine *e);

/* Flow: takes ownership of fd (a bound, non-blocking UDP socket) and starts
 * serving it. NULL (fd left open) with errno set on failure. It forwards
 * nothing until msm_flow_set_source names its source. Another SSRC from that
 * source takes over only once the current one was silent for takeover_ms and
 * the new one sent two packets in sequence (RFC 3550 A.1 MIN_SEQUENTIAL). */
msm_flow *msm_flow_new(msm_engine *e, int fd, uint32_t clock_rate, int splice, uint32_t takeover_ms);
/* Legs of fd's family (the other IP family than the flow's socket) are sent
 * from fd, which the flow owns from now on (closed with it). Once per flow: -1
 * with errno EEXIST after the first, or another errno when fd is no socket. */
int msm_flow_set_alt_fd(msm_engine *e, msm_flow *f, int fd);
/* The one address RTP may come from (port 0: any port of that host); family 0:
 * none, nothing is forwarded. Everything else is dropped as wrong_source. */
int msm_flow_set_source(msm_engine *e, msm_flow *f, int family, const uint8_t *addr, uint16_t port);
/* RFC 3550 A.1 header validity (version, CSRC count, extension, padding; no
 * RTCP packet types): 1 if valid. */
int msm_rtp_valid(const uint8_t *p, uint32_t len);
/* Publishes a new leg set: every leg (their RTP addresses are the viewers whose
 * packets are dropped) and which of them are enabled (the fan-out targets). */
int msm_flow_set_legs(msm_engine *e, msm_flow *f, msm_leg **legs, const uint8_t *enabled, uint32_t n);
/* SRTP (RFC 3711) in `profile` (MSM_SRTP_*): `key` is the 16-byte master key
 * then the salt (keylen 30 for AES_CM_128_HMAC_SHA1_80, 28 for
 * AEAD_AES_128_GCM). On a flow: what arrives from its source
 * is unprotected before the RTP checks; failures are dropped as srtp_errors.
 * Called again (a rekey), the previous key is still accepted for grace_ms.
 * On a leg: it protects what it sends. -1 with errno ENOTSUP when the engine
 * has no libsrtp2 (built without its headers, or started before any
 * msm_srtp_load succeeded), EPROTONOSUPPORT for a profile it cannot do (GCM
 * without MSM_FEATURE_SRTP_GCM), EINVAL for a bad key, ENOMEM. */
int msm_flow_set_srtp(msm_engine *e, msm_flow *f, int profile, const uint8_t *key, uint32_t keylen,
                      uint32_t grace_ms);
int msm_leg_set_srtp(msm_engine *e, msm_leg *l, int profile, const uint8_t *key, uint32_t keylen);
void msm_flow_stats_get(msm_flow *f, msm_flow_stats *out);
/* Stops serving, waits (at most timeout_ms) until the engine thread let go of
 * the flow, writes its final counters to `final` (if not NULL), frees it and
 * closes its socket. The flow's legs are not freed. */
void msm_flow_close(msm_engine *e, msm_flow *f, int timeout_ms, msm_flow_stats *final);

/* Leg: a destination. family 0 (unresolvable) counts every packet as a send error. */
msm_leg *msm_leg_new(int family, const uint8_t *addr, uint16_t port, uint32_t scope_id);
void msm_leg_stats_get(msm_leg *l, msm_leg_stats *out);
/* Waits (at most timeout_ms) until the engine thread can no longer be using
 * the leg, writes its final counters to `final` (if not NULL) and frees it.
 * With timeout_ms <= 0 it does not wait: the counters are read now and the
 * thread frees the leg at its next quiescent point. Call only after
 * publishing leg sets without it. */
void msm_leg_free(msm_engine *e, msm_leg *l, int timeout_ms, msm_leg_stats *final);

/* The statistics on their own (for tests against the Python reference). */
void msm_rtpstats_init(msm_rtpstats *s, uint32_t clock_rate, uint32_t min_sequential);
int msm_rtpstats_update(msm_rtpstats *s, uint32_t seq, uint32_t ts, int64_t arrival_ns);
int64_t msm_rtpstats_expected(const msm_rtpstats *s);

#endif
