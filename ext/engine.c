/* msm native engine: see engine.h for the design and the threading rules. */
#define _GNU_SOURCE
#include "engine.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifdef MSM_HAVE_SRTP
#include <dlfcn.h>
#include <srtp2/srtp.h>
#endif

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

/* Bounds, and why these numbers. */
#define RX_BATCH 64 /* datagrams per recvmmsg: a video frame's worth of packets; more adds latency, not rate */
#define RX_SLOT 65536 /* one receive slot holds any UDP datagram, or a whole GRO train (<= 64 KiB) */
#define RX_ROUNDS 16 /* recvmmsg calls per readiness event, then other flows get their turn */
#define GRO_MAX_SEGS 64 /* the kernel coalesces at most 64 datagrams into one GRO train */
#define MAX_PKTS (RX_BATCH * GRO_MAX_SEGS)
#define TX_CHUNK 1024 /* UIO_MAXIOV: sendmmsg takes at most this many messages per call */
#define GSO_MAX_SEGS 64 /* UDP_MAX_SEGMENTS on older kernels (128 on newer) */
#define GSO_MAX_BYTES 65000 /* a GSO super-datagram still has to fit one IP packet's 16-bit length */
#define MAX_EVENTS 256 /* epoll events per wakeup; the rest come on the next call (level-triggered) */
#define SOCK_BUF (8 << 20) /* 8 MiB socket buffers when allowed: ~50 ms at 1.3 Mpps of 1316 B */
/* SRTP legs send protected copies from here (each leg has its own key, so no
 * leg can send the receive buffer itself). 2 MiB holds a full TX_CHUNK of
 * 1.4 KB packets; when it is full the queued messages are flushed first. */
#define SRTP_SCRATCH (2u << 20)
#define SRTP_TRAILER 16 /* room libsrtp may write after a packet: the largest tag (GCM's), no MKI (SRTP_MAX_TAG_LEN) */
/* What protecting adds to every RTP packet (equal sizes stay equal: GSO), and
 * the master key + salt, per profile: */
#define SRTP_CM_TAG 10 /* AES_CM_128_HMAC_SHA1_80: 80-bit HMAC-SHA1 tag */
#define SRTP_CM_KEYLEN 30 /* 16-byte master key + 14-byte master salt */
#define SRTP_GCM_TAG 16 /* AEAD_AES_128_GCM (RFC 7714): 128-bit GCM tag */
#define SRTP_GCM_KEYLEN 28 /* 16-byte master key + 12-byte master salt */
#define MAX_DATAGRAM 65507 /* the largest UDP payload: a packet that no longer fits once protected is not sent */

#define RTP_SEQ_MOD 65536u
#define MAX_DROPOUT 3000u
#define MAX_MISORDER 100u
#define SEEN_BITS 100u
/* RFC 3550 A.1 MIN_SEQUENTIAL: packets in sequence before another SSRC takes over. */
#define TAKEOVER_SEQUENTIAL 2u

#define CTL_RX_SPACE (CMSG_SPACE(sizeof(struct timespec)) + CMSG_SPACE(sizeof(int)) + 64)
#define CTL_TX_SPACE CMSG_SPACE(sizeof(uint16_t))

/* Counters: one writer (the engine thread), readers in Python. */
#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define BUMP(x, v) __atomic_store_n(&(x), LOAD(x) + (v), __ATOMIC_RELAXED)

/* SRTP sessions of a flow (receive: the current key, and the previous one
 * until prev_until_ns after a rekey) or of a leg (send: cur only). Immutable
 * once published: a rekey publishes a new one and retires the old; the
 * sessions themselves are used by the engine thread only. */
typedef struct srtpkeys {
    void *cur, *prev; /* srtp_t */
    uint32_t tag; /* bytes cur's protect adds to an RTP packet (SRTP_CM_TAG, SRTP_GCM_TAG) */
    int64_t prev_until_ns; /* CLOCK_REALTIME, like the packets' arrival times */
    int owns_prev; /* this set frees prev when it is freed (a newer set took over cur) */
} srtpkeys;

struct msm_leg {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int family; /* 0: unresolvable destination */
    srtpkeys *srtp; /* atomic pointer; NULL: plain RTP */
    uint64_t packets_sent, bytes_sent, send_errors, dropped_backlog, gso_sends;
    uint64_t mtu_exceeded; /* packets over the path MTU (EMSGSIZE: the sockets never fragment) */
    uint32_t gso_disabled;
};

/* An immutable leg set; replaced as a whole and retired. */
typedef struct legset {
    uint32_t nlegs, ntargets;
    uint64_t gen;
    msm_leg **all; /* every leg: their RTP addresses are viewers */
    msm_leg **targets; /* enabled legs */
} legset;

/* The one address a flow's RTP may come from; immutable, replaced as a whole and retired. */
typedef struct srcfilter {
    struct sockaddr_storage addr;
    int any_port; /* only the host must match */
    uint64_t gen;
} srcfilter;

/* What the sequence lock guards (written by the engine thread per batch). */
typedef struct flow_state {
    uint64_t packets_received, bytes_received, dropped_invalid, dropped_from_viewers, source_changes;
    uint64_t dropped_wrong_source, dropped_wrong_ssrc, srtp_errors;
    /* Another SSRC from the source, on probation before it may take over. */
    uint32_t cand_ssrc, cand_seq, cand_count, has_cand;
    int64_t lost_before, expected_before;
    uint32_t ssrc, has_ssrc, out_ssrc, has_out;
    uint32_t seq_offset, ts_offset;
    uint32_t last_out_seq, last_out_ts, has_last_out;
    uint32_t first_out_seq, first_out_ts; /* the flow's first forwarded packet (RTSP RTP-Info) */
    int64_t last_arrival_ns;
    msm_rtpstats rs;
} flow_state;

struct msm_flow {
    int fd;
    /* The flow's socket of the other IP family (msm_flow_set_alt_fd): legs of
     * alt_family (0: none yet) are sent from alt_fd. */
    int alt_fd, alt_family;
    int dead;
    uint32_t clock_rate;
    int splice;
    legset *legs; /* atomic pointer */
    srcfilter *source; /* atomic pointer; NULL: nothing is forwarded */
    srtpkeys *srtp; /* atomic pointer; NULL: what arrives is plain RTP */
    int64_t takeover_ns; /* the current SSRC's silence before another may take over */
    msm_flow *prev, *next; /* the engine's list of live flows (under its mutex) */
    uint32_t seq; /* sequence lock over st */
    flow_state st;
    uint64_t packets_forwarded, dropped_backlog, socket_errors, batches;
    /* Engine thread only: the last sender address and what it was (SRC_*). */
    struct sockaddr_storage cache_src;
    uint64_t cache_gen, cache_src_gen;
    int cache_valid, cache_class;
};

typedef struct retired {
    void (*fn)(msm_engine *, void *);
    void *p;
    struct retired *next;
} retired;

typedef struct run {
    uint32_t start, n, seg, bytes;
} run;

typedef struct txmeta {
    msm_leg *leg;
    uint32_t npk, bytes, seg;
} txmeta;

typedef union {
    char buf[CTL_RX_SPACE];
    struct cmsghdr align;
} rxctl_t;

typedef union {
    char buf[CTL_TX_SPACE];
    struct cmsghdr align;
} txctl_t;

struct msm_engine {
    int epfd, evfd;
    int features;
    int alive; /* the thread runs */
    int stop;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    retired *retired; /* atomic head; pushed under mu */
    uint64_t taken_gen, freed_gen; /* under mu */
    msm_flow *flows; /* under mu */
    uint32_t nflows;
    uint64_t legset_gen;
    uint64_t loops, events, reclaimed, coalesced;
    uint32_t coalesce_ns; /* atomic */
    /* Engine thread only. */
    uint32_t iter_packets;
    uint8_t *slots;
    struct mmsghdr rx[RX_BATCH];
    struct iovec rxiov[RX_BATCH];
    struct sockaddr_storage rxaddr[RX_BATCH];
    rxctl_t rxctl[RX_BATCH];
    struct iovec pk[MAX_PKTS];
    run runs[MAX_PKTS];
    txctl_t runctl[MAX_PKTS];
    struct mmsghdr tx[TX_CHUNK];
    txmeta meta[TX_CHUNK];
    uint32_t ntx;
    uint8_t *scratch; /* SRTP_SCRATCH bytes: protected copies for SRTP legs */
    uint32_t scratch_used;
    struct iovec siov[TX_CHUNK]; /* one per queued protected packet (in scratch) */
    uint32_t siov_used;
    run sruns[MAX_PKTS]; /* the batch's GSO runs on protected sizes, shared by its SRTP legs of one tag size */
    txctl_t sruntctl[MAX_PKTS];
};

/* ------------------------------------------------------------------ SRTP (libsrtp2) */
/* libsrtp is not linked: its functions are resolved at run time (dlopen +
 * dlsym) from the library msm_srtp_load names, else the system's
 * libsrtp2.so.1. Why: Debian's libsrtp2 is built on NSS, which sets up a
 * PK11 context per packet (about 13 us per 1.3 KB AES-CM + HMAC-SHA1 protect
 * on a 2-vCPU EPYC, 2.4 us with AES-GCM); the same libsrtp built on OpenSSL
 * (AES-NI, SHA extensions) takes about 1.6 us, and 1.1 us with AES-GCM
 * (RFC 7714, which relay legs use when both proxies can: MSM_FEATURE_SRTP_GCM).
 * One ships with pylibsrtp, a dependency of the proxy, whose module
 * file exports the srtp_* functions. The headers (libsrtp2-dev) still give
 * the types: srtp_policy_t has one layout across libsrtp 2.x (libsrtp2.so.1),
 * and a library of another major version is refused.
 *
 * One library per process, chosen by the first successful load and kept
 * until exit (never dlclosed): every session of every engine is created,
 * used and freed through this one table, so sessions of two libsrtp copies
 * never meet. srtp_init runs once for it; when it fails because another
 * user in the process (pylibsrtp, at import) already initialised that same
 * copy, a probe session says whether the library is usable anyway. */
#ifdef MSM_HAVE_SRTP
typedef struct srtp_api {
    srtp_err_status_t (*init)(void);
    srtp_err_status_t (*create)(srtp_t *, const srtp_policy_t *);
    srtp_err_status_t (*dealloc)(srtp_t);
    srtp_err_status_t (*protect)(srtp_t, void *, int *);
    srtp_err_status_t (*unprotect)(srtp_t, void *, int *);
    void (*policy_rtp_default)(srtp_crypto_policy_t *);
    void (*policy_rtcp_default)(srtp_crypto_policy_t *);
    void (*policy_gcm)(srtp_crypto_policy_t *); /* NULL: this libsrtp has no AEAD_AES_128_GCM */
    unsigned int (*get_version)(void);
} srtp_api;

static srtp_api srtp_fn; /* written once, under srtp_mu, before srtp_ready is published */
#define SRTP_LIBNAME 512
static char srtp_libname[SRTP_LIBNAME];
#define SRTP_SYSTEM_LIBRARY "libsrtp2.so.1"
#endif
static pthread_mutex_t srtp_mu = PTHREAD_MUTEX_INITIALIZER;
static int srtp_ready; /* atomic: 1 once srtp_fn is complete and the library initialised */
static int srtp_gcm; /* set before srtp_ready: that library made an AEAD_AES_128_GCM session */

#ifdef MSM_HAVE_SRTP
/* A session of `profile` (MSM_SRTP_*; its key length checked by the caller). */
static void *srtp_session(int profile, const uint8_t *key, int inbound) {
    srtp_policy_t pol;
    srtp_t s = NULL;
    unsigned char material[SRTP_CM_KEYLEN];
    memset(&pol, 0, sizeof pol);
    if (profile == MSM_SRTP_AEAD_AES_128_GCM) {
        if (!srtp_fn.policy_gcm)
            return NULL;
        memcpy(material, key, SRTP_GCM_KEYLEN);
        srtp_fn.policy_gcm(&pol.rtp); /* 16-byte key, 16-byte tag; RFC 7714's 12-byte salt */
        srtp_fn.policy_gcm(&pol.rtcp);
    } else {
        memcpy(material, key, SRTP_CM_KEYLEN);
        srtp_fn.policy_rtp_default(&pol.rtp); /* AES_CM_128_HMAC_SHA1_80 */
        srtp_fn.policy_rtcp_default(&pol.rtcp);
    }
    pol.ssrc.type = inbound ? ssrc_any_inbound : ssrc_any_outbound;
    pol.key = material;
    pol.window_size = 128; /* replay window (packets): libsrtp's default and minimum */
    if (srtp_fn.create(&s, &pol) != srtp_err_status_ok)
        s = NULL;
    memset(material, 0, sizeof material);
    return s;
}

static void srtp_free_session(void *s) {
    if (s)
        srtp_fn.dealloc((srtp_t)s);
}

/* 1 and *len the inner packet's length if p authenticates (and is no replay) under s. */
static int srtp_open(void *s, uint8_t *p, uint32_t *len) {
    int l = (int)*len;
    if (!s || srtp_fn.unprotect((srtp_t)s, p, &l) != srtp_err_status_ok)
        return 0;
    *len = (uint32_t)l;
    return 1;
}

static int srtp_seal(void *s, uint8_t *p, uint32_t *len) {
    int l = (int)*len;
    if (srtp_fn.protect((srtp_t)s, p, &l) != srtp_err_status_ok)
        return 0;
    *len = (uint32_t)l;
    return 1;
}

/* Resolves and initialises one candidate into srtp_fn; 0 with a reason in err if unusable. */
static int srtp_try(const char *path, char *err, size_t errlen) {
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    srtp_api fn;
    void *probe;
    unsigned int version;
    static const uint8_t zero[SRTP_CM_KEYLEN];
    if (!h) {
        snprintf(err, errlen, "%s", dlerror());
        return 0;
    }
#define SYM(field, name)                                                                                          \
    if (!(*(void **)&fn.field = dlsym(h, name))) {                                                                 \
        snprintf(err, errlen, "%s: no %s", path, name);                                                           \
        dlclose(h);                                                                                                 \
        return 0;                                                                                                   \
    }
    SYM(init, "srtp_init")
    SYM(create, "srtp_create")
    SYM(dealloc, "srtp_dealloc")
    SYM(protect, "srtp_protect")
    SYM(unprotect, "srtp_unprotect")
    SYM(policy_rtp_default, "srtp_crypto_policy_set_rtp_default")
    SYM(policy_rtcp_default, "srtp_crypto_policy_set_rtcp_default")
    SYM(get_version, "srtp_get_version")
#undef SYM
    *(void **)&fn.policy_gcm = dlsym(h, "srtp_crypto_policy_set_aes_gcm_128_16_auth"); /* optional */
    version = fn.get_version();
    if (version >> 24 != 2) {
        snprintf(err, errlen, "%s: libsrtp %u.%u, not 2.x", path, version >> 24, (version >> 16) & 0xff);
        dlclose(h);
        return 0;
    }
    srtp_fn = fn;
    /* A second srtp_init on an initialised copy re-runs its self tests and
     * may fail; the probe decides. */
    (void)fn.init();
    probe = srtp_session(MSM_SRTP_AES_CM_128_HMAC_SHA1_80, zero, 0);
    if (!probe) {
        snprintf(err, errlen, "%s: srtp_init failed", path);
        memset(&srtp_fn, 0, sizeof srtp_fn);
        dlclose(h);
        return 0;
    }
    srtp_free_session(probe);
    /* GCM needs libsrtp built on a crypto library (OpenSSL, NSS...): its own has none. */
    probe = srtp_session(MSM_SRTP_AEAD_AES_128_GCM, zero, 0);
    srtp_gcm = probe != NULL;
    srtp_free_session(probe);
    snprintf(srtp_libname, sizeof srtp_libname, "%s", path);
    return 1;
}
#else
static void *srtp_session(int profile, const uint8_t *key, int inbound) {
    return NULL;
}
static void srtp_free_session(void *s) {
}
static int srtp_open(void *s, uint8_t *p, uint32_t *len) {
    return 0;
}
static int srtp_seal(void *s, uint8_t *p, uint32_t *len) {
    return 0;
}
#endif

int msm_srtp_load(const char *path, char *err, size_t errlen) {
#ifdef MSM_HAVE_SRTP
    char first[256] = "";
    int ok = 1;
    if (errlen)
        *err = 0;
    pthread_mutex_lock(&srtp_mu);
    if (!__atomic_load_n(&srtp_ready, __ATOMIC_ACQUIRE)) {
        ok = 0;
        if (path && *path)
            ok = srtp_try(path, first, sizeof first);
        if (!ok && !srtp_try(SRTP_SYSTEM_LIBRARY, err, errlen)) {
            if (*first) {
                char sys[256];
                snprintf(sys, sizeof sys, "%s", err);
                snprintf(err, errlen, "%s; %s", first, sys);
            }
        } else {
            if (!ok) /* the system library, after this reason: */
                snprintf(err, errlen, "%s", first);
            ok = 1;
            __atomic_store_n(&srtp_ready, 1, __ATOMIC_RELEASE);
        }
    }
    pthread_mutex_unlock(&srtp_mu);
    return ok ? 0 : -1;
#else
    snprintf(err, errlen, "the native engine was built without libsrtp2's headers");
    return -1;
#endif
}

const char *msm_srtp_library(void) {
#ifdef MSM_HAVE_SRTP
    if (__atomic_load_n(&srtp_ready, __ATOMIC_ACQUIRE))
        return srtp_libname;
#endif
    return "";
}

static void free_srtpkeys(msm_engine *e, void *p) {
    srtpkeys *k = p;
    (void)e;
    if (!k)
        return;
    if (k->owns_prev)
        srtp_free_session(k->prev);
    free(k);
}

/* Frees a set and both its sessions (the flow or leg is going away). */
static void free_srtpkeys_all(srtpkeys *k) {
    if (!k)
        return;
    srtp_free_session(k->cur);
    srtp_free_session(k->prev);
    free(k);
}

/* ------------------------------------------------------------------ RFC 3550 A.1 / A.8 */

static void rs_init_seq(msm_rtpstats *s, uint32_t seq) {
    s->base_seq = seq;
    s->max_seq = seq;
    s->bad_seq = RTP_SEQ_MOD + 1;
    s->cycles = 0;
    s->received = 0;
    s->seen_lo = 1;
    s->seen_hi = 0;
    /* A new sequence space has a new timestamp origin: restart the jitter
     * reference, keep the estimate. */
    s->has_last = 0;
    s->gen++;
}

void msm_rtpstats_init(msm_rtpstats *s, uint32_t clock_rate, uint32_t min_sequential) {
    uint64_t gen = s->gen;
    memset(s, 0, sizeof *s);
    s->gen = gen + 1;
    s->clock_rate = clock_rate;
    s->min_sequential = min_sequential ? min_sequential : 1;
    s->bad_seq = RTP_SEQ_MOD + 1;
}

static void seen_shift(msm_rtpstats *s, uint32_t by) {
    /* (seen << by) | 1, kept to SEEN_BITS bits (two words) */
    if (by >= SEEN_BITS) {
        s->seen_lo = 1;
        s->seen_hi = 0;
        return;
    }
    if (by >= 64) {
        s->seen_hi = s->seen_lo << (by - 64);
        s->seen_lo = 0;
    } else {
        s->seen_hi = (s->seen_hi << by) | (by ? s->seen_lo >> (64 - by) : 0);
        s->seen_lo <<= by;
    }
    s->seen_hi &= (1ull << (SEEN_BITS - 64)) - 1;
    s->seen_lo |= 1;
}

static int seen_test_set(msm_rtpstats *s, uint32_t bit) {
    uint64_t *w = bit >= 64 ? &s->seen_hi : &s->seen_lo;
    uint64_t m = 1ull << (bit & 63);
    if (*w & m)
        return 1;
    *w |= m;
    return 0;
}

static void rs_jitter(msm_rtpstats *s, uint32_t ts, int64_t arrival_ns) {
    if (!s->clock_rate)
        return;
    if (s->has_last) {
        int32_t ts_delta = (int32_t)(ts - s->last_ts); /* signed, modulo 2^32 */
        double d = (double)(arrival_ns - s->last_arrival_ns) * 1e-9 * s->clock_rate - ts_delta;
        if (d < 0)
            d = -d;
        s->jitter += (d - s->jitter) / 16.0;
    }
    s->has_last = 1;
    s->last_arrival_ns = arrival_ns;
    s->last_ts = ts;
}

int msm_rtpstats_update(msm_rtpstats *s, uint32_t seq, uint32_t ts, int64_t arrival_ns) {
    seq &= 0xFFFF;
    if (!s->started) {
        s->started = 1;
        rs_init_seq(s, seq);
        s->max_seq = (seq - 1) & 0xFFFF;
        s->probation = s->min_sequential;
    }
    uint32_t udelta = (seq - s->max_seq) & 0xFFFF;
    int duplicate = 0;
    if (s->probation) {
        if (udelta == 1) {
            s->probation--;
            s->max_seq = seq;
            if (s->probation == 0) {
                rs_init_seq(s, seq);
                s->received++;
                rs_jitter(s, ts, arrival_ns);
                return 1;
            }
        } else {
            s->probation = s->min_sequential - 1;
            s->max_seq = seq;
        }
        return 0;
    }
    if (udelta < MAX_DROPOUT) {
        if (udelta == 0) {
            duplicate = 1;
        } else {
            if (seq < s->max_seq)
                s->cycles += RTP_SEQ_MOD;
            s->max_seq = seq;
            seen_shift(s, udelta);
        }
    } else if (udelta <= RTP_SEQ_MOD - MAX_MISORDER) {
        if (seq == s->bad_seq) {
            rs_init_seq(s, seq);
            s->restarts++;
        } else {
            s->bad_seq = (seq + 1) & 0xFFFF;
            return 0;
        }
    } else {
        if (seen_test_set(s, RTP_SEQ_MOD - udelta))
            duplicate = 1;
        else
            s->reordered++;
    }
    s->received++;
    if (duplicate)
        s->duplicates++;
    else
        rs_jitter(s, ts, arrival_ns);
    return 1;
}

int64_t msm_rtpstats_expected(const msm_rtpstats *s) {
    if (!s->received)
        return 0;
    return (int64_t)(s->cycles + s->max_seq) - (int64_t)s->base_seq + 1;
}

static uint64_t rs_highest(const msm_rtpstats *s) {
    return s->received ? s->cycles + s->max_seq : 0;
}

/* ------------------------------------------------------------------ helpers */

static int64_t realtime_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static int same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port && !memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr);
    }
    return 0;
}

static void wake(msm_engine *e) {
    uint64_t one = 1;
    ssize_t r = write(e->evfd, &one, sizeof one);
    (void)r; /* a full counter already means "wake up" */
}

/* Hands p to the engine thread, which frees it at its next quiescent point.
 * Returns the generation to wait past (see wait_freed). */
static uint64_t retire(msm_engine *e, void (*fn)(msm_engine *, void *), void *p) {
    retired *r = malloc(sizeof *r);
    uint64_t t;
    if (!r)
        return 0; /* out of memory: leak p rather than free it under the thread's feet */
    r->fn = fn;
    r->p = p;
    pthread_mutex_lock(&e->mu);
    r->next = e->retired;
    __atomic_store_n(&e->retired, r, __ATOMIC_RELEASE);
    t = e->taken_gen;
    pthread_mutex_unlock(&e->mu);
    wake(e);
    return t;
}

static void reclaim(msm_engine *e) {
    retired *r;
    uint64_t g;
    if (!__atomic_load_n(&e->retired, __ATOMIC_ACQUIRE))
        return;
    pthread_mutex_lock(&e->mu);
    r = e->retired;
    e->retired = NULL;
    g = ++e->taken_gen;
    pthread_mutex_unlock(&e->mu);
    while (r) {
        retired *next = r->next;
        if (r->fn) /* NULL: a barrier (see quiesce) */
            r->fn(e, r->p);
        free(r);
        r = next;
        e->reclaimed++;
    }
    pthread_mutex_lock(&e->mu);
    e->freed_gen = g;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

static void free_plain(msm_engine *e, void *p) {
    (void)e;
    free(p);
}

static void free_srtpkeys_whole(msm_engine *e, void *p) {
    (void)e;
    free_srtpkeys_all(p);
}

static void free_leg(msm_engine *e, void *p) {
    msm_leg *l = p;
    (void)e;
    free_srtpkeys_all(l->srtp);
    free(l);
}

static void free_flow(msm_engine *e, void *p) {
    msm_flow *f = p;
    (void)e;
    free(f->legs);
    free(f->source);
    free_srtpkeys_all(f->srtp);
    close(f->fd);
    if (f->alt_family)
        close(f->alt_fd);
    free(f);
}

/* ------------------------------------------------------------------ receive side */

static void new_source(msm_flow *f, uint32_t ssrc, uint32_t seq, uint32_t ts, int64_t now) {
    flow_state *st = &f->st;
    if (st->has_ssrc) {
        int64_t expected = msm_rtpstats_expected(&st->rs);
        st->lost_before += expected - st->rs.received;
        st->expected_before += expected;
        st->source_changes++;
    }
    st->ssrc = ssrc;
    st->has_ssrc = 1;
    msm_rtpstats_init(&st->rs, f->clock_rate, 1);
    if (!st->has_out) {
        st->out_ssrc = ssrc;
        st->has_out = 1;
    } else if (f->splice && st->has_last_out) {
        /* Continue where viewers left off: the next sequence number, and a
         * timestamp advanced by the wall time the source was away. */
        double gap = (double)(now - st->last_arrival_ns) * 1e-9;
        int64_t advance;
        if (gap < 0)
            gap = 0;
        advance = f->clock_rate ? (int64_t)(gap * f->clock_rate) : 1;
        if (advance < 1)
            advance = 1;
        st->seq_offset = (st->last_out_seq + 1 - seq) & 0xFFFF;
        st->ts_offset = st->last_out_ts + (uint32_t)advance - ts;
    }
}

static inline uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline void put32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

int msm_rtp_valid(const uint8_t *p, uint32_t len) {
    uint32_t hl, pt;
    if (len < 12 || (p[0] & 0xC0) != 0x80)
        return 0;
    /* Payload types 64-95 collide with RTCP's 192-223 (RFC 5761 4): players
     * that demultiplex take them for RTCP (an SR, a BYE ending the stream). */
    pt = p[1] & 0x7F;
    if (pt >= 64 && pt <= 95)
        return 0;
    hl = 12 + 4u * (p[0] & 0x0F); /* CSRC count */
    if (hl > len)
        return 0;
    if (p[0] & 0x10) { /* header extension: 4 octets, then its length in words */
        if (hl + 4 > len)
            return 0;
        hl += 4 + 4u * ((uint32_t)p[hl + 2] << 8 | p[hl + 3]);
        if (hl > len)
            return 0;
    }
    if (p[0] & 0x20) { /* padding: the last octet counts it, itself included */
        uint32_t pad = p[len - 1];
        if (pad == 0 || hl + pad > len)
            return 0;
    }
    return 1;
}

/* Another SSRC from the expected source: 1 if it takes over now (the current
 * one has been silent long enough and this one is in sequence). */
static int takes_over(msm_flow *f, uint32_t ssrc, uint32_t seq, int64_t now) {
    flow_state *st = &f->st;
    if (now - st->last_arrival_ns < f->takeover_ns) {
        st->has_cand = 0;
        return 0;
    }
    if (st->has_cand && st->cand_ssrc == ssrc && ((st->cand_seq + 1) & 0xFFFF) == seq)
        st->cand_count++;
    else
        st->cand_count = 1;
    st->has_cand = 1;
    st->cand_ssrc = ssrc;
    st->cand_seq = seq;
    if (st->cand_count < TAKEOVER_SEQUENTIAL)
        return 0;
    st->has_cand = 0;
    return 1;
}

/* One datagram (or GRO segment) from the expected source: 1 if it is RTP to forward. */
static int on_rtp(msm_flow *f, uint8_t *p, uint32_t len, int64_t now) {
    flow_state *st = &f->st;
    uint32_t seq, ts, ssrc;
    if (!msm_rtp_valid(p, len)) {
        st->dropped_invalid++;
        return 0;
    }
    seq = (uint32_t)p[2] << 8 | p[3];
    ts = be32(p + 4);
    ssrc = be32(p + 8);
    if (!st->has_ssrc || ssrc != st->ssrc) {
        if (st->has_ssrc && !takes_over(f, ssrc, seq, now)) {
            st->dropped_wrong_ssrc++;
            return 0;
        }
        new_source(f, ssrc, seq, ts, now);
    }
    msm_rtpstats_update(&st->rs, seq, ts, now);
    st->packets_received++;
    st->bytes_received += len;
    st->last_arrival_ns = now;
    if (f->splice && st->has_out) {
        uint32_t out_seq = (seq + st->seq_offset) & 0xFFFF;
        uint32_t out_ts = ts + st->ts_offset;
        if (!st->has_last_out) {
            st->first_out_seq = out_seq;
            st->first_out_ts = out_ts;
        }
        st->last_out_seq = out_seq;
        st->last_out_ts = out_ts;
        st->has_last_out = 1;
        if (st->seq_offset || st->ts_offset || ssrc != st->out_ssrc) {
            /* In place: every leg sends this same buffer. */
            p[2] = out_seq >> 8;
            p[3] = out_seq;
            put32(p + 4, out_ts);
            put32(p + 8, st->out_ssrc);
        }
    }
    return 1;
}

enum { SRC_OK, SRC_VIEWER, SRC_WRONG };

static int same_host(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr == ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    if (a->ss_family == AF_INET6)
        return !memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr, &((const struct sockaddr_in6 *)b)->sin6_addr,
                       sizeof(struct in6_addr));
    return 0;
}

/* Who sent a datagram: a viewer (its NAT punch), the expected source, or anyone else. */
static int classify(msm_flow *f, const legset *ls, const srcfilter *sf, const struct sockaddr_storage *src) {
    int cls = SRC_OK;
    uint64_t gen = ls ? ls->gen : 0, sgen = sf ? sf->gen : 0;
    if (f->cache_valid && f->cache_gen == gen && f->cache_src_gen == sgen && same_addr(&f->cache_src, src))
        return f->cache_class;
    for (uint32_t i = 0; ls && i < ls->nlegs; i++) {
        if (ls->all[i]->family && same_addr(&ls->all[i]->addr, src)) {
            cls = SRC_VIEWER;
            break;
        }
    }
    if (cls == SRC_OK && (!sf || !(sf->any_port ? same_host(&sf->addr, src) : same_addr(&sf->addr, src))))
        cls = SRC_WRONG;
    f->cache_src = *src;
    f->cache_gen = gen;
    f->cache_src_gen = sgen;
    f->cache_valid = 1;
    f->cache_class = cls;
    return cls;
}

static void seq_begin(msm_flow *f) {
    __atomic_store_n(&f->seq, f->seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
}

static void seq_end(msm_flow *f) {
    __atomic_store_n(&f->seq, f->seq + 1, __ATOMIC_RELEASE);
}

/* Measures and rewrites a received batch; returns the packets to forward (e->pk). */
static uint32_t ingest(msm_engine *e, msm_flow *f, const legset *ls, int n) {
    uint32_t npk = 0;
    int64_t batch_now = 0;
    flow_state *st = &f->st;
    const srcfilter *sf = __atomic_load_n(&f->source, __ATOMIC_ACQUIRE);
    const srtpkeys *sk = __atomic_load_n(&f->srtp, __ATOMIC_ACQUIRE);
    seq_begin(f);
    for (int i = 0; i < n; i++) {
        struct msghdr *h = &e->rx[i].msg_hdr;
        uint32_t len = e->rx[i].msg_len;
        uint8_t *buf = e->rxiov[i].iov_base;
        int64_t now = -1;
        uint32_t gso = 0, segs, step, off;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                struct timespec t;
                memcpy(&t, CMSG_DATA(c), sizeof t);
                now = (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
            } else if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
                int g;
                memcpy(&g, CMSG_DATA(c), sizeof g);
                gso = g > 0 ? (uint32_t)g : 0;
            }
        }
        if (now < 0) {
            if (!batch_now)
                batch_now = realtime_ns();
            now = batch_now;
        }
        segs = (gso && len > gso) ? (len + gso - 1) / gso : 1;
        if (len == 0 || (h->msg_flags & MSG_TRUNC)) {
            st->dropped_invalid += segs;
            continue;
        }
        switch (classify(f, ls, sf, (const struct sockaddr_storage *)h->msg_name)) {
        case SRC_VIEWER:
            st->dropped_from_viewers += segs;
            continue;
        case SRC_WRONG:
            st->dropped_wrong_source += segs;
            continue;
        }
        step = segs > 1 ? gso : len;
        for (off = 0; off < len; off += step) {
            uint32_t sl = len - off < step ? len - off : step;
            /* SRTP: authenticated (and replay-checked) before anything reads the
             * header; decrypted in place (the packet only shrinks by its tag). */
            if (sk && !srtp_open(sk->cur, buf + off, &sl) &&
                !(sk->prev && now < sk->prev_until_ns && srtp_open(sk->prev, buf + off, &sl))) {
                st->srtp_errors++;
                continue;
            }
            if (on_rtp(f, buf + off, sl, now)) {
                e->pk[npk].iov_base = buf + off;
                e->pk[npk].iov_len = sl;
                npk++;
            }
        }
    }
    seq_end(f);
    return npk;
}

/* ------------------------------------------------------------------ send side */

static void tx_sent(msm_flow *f, const txmeta *m) {
    BUMP(m->leg->packets_sent, m->npk);
    BUMP(m->leg->bytes_sent, m->bytes);
    if (m->seg)
        BUMP(m->leg->gso_sends, 1);
    BUMP(f->packets_forwarded, m->npk);
}

static void tx_backlog(msm_flow *f, const txmeta *m) {
    BUMP(m->leg->dropped_backlog, m->npk);
    BUMP(f->dropped_backlog, m->npk);
}

static int would_block(int err) {
    return err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS;
}

/* The kernel refused a GSO message (no checksum offload, segment above the
 * path MTU, too many segments, old kernel...): send its packets one by one. */
static int gso_refused(int err) {
    return err == EIO || err == EINVAL || err == EMSGSIZE || err == ENOPROTOOPT || err == EOPNOTSUPP;
}

/* A send the kernel refused: over the path MTU (counted apart), or another error. */
static void leg_error(msm_leg *leg, uint32_t npk) {
    if (errno == EMSGSIZE)
        BUMP(leg->mtu_exceeded, npk);
    else
        BUMP(leg->send_errors, npk);
}

/* The socket a leg's packets leave from: the flow's own, or the one of the leg's family. */
static int tx_fd(const msm_flow *f, const msm_leg *leg) {
    int af = __atomic_load_n(&f->alt_family, __ATOMIC_ACQUIRE);
    return af && leg->family == af ? f->alt_fd : f->fd;
}

static void send_each(msm_flow *f, struct msghdr *gso_msg, const txmeta *gm) {
    struct mmsghdr one[GSO_MAX_SEGS];
    uint32_t n = gm->npk, off = 0;
    for (uint32_t k = 0; k < n; k++) {
        memset(&one[k], 0, sizeof one[k]);
        one[k].msg_hdr.msg_name = gso_msg->msg_name;
        one[k].msg_hdr.msg_namelen = gso_msg->msg_namelen;
        one[k].msg_hdr.msg_iov = &gso_msg->msg_iov[k];
        one[k].msg_hdr.msg_iovlen = 1;
    }
    while (off < n) {
        int r = sendmmsg(tx_fd(f, gm->leg), one + off, n - off, MSG_DONTWAIT);
        if (r > 0) {
            for (int k = 0; k < r; k++) {
                txmeta m = {gm->leg, 1, (uint32_t)gso_msg->msg_iov[off + k].iov_len, 0};
                tx_sent(f, &m);
            }
            off += r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && would_block(errno)) {
            txmeta m = {gm->leg, n - off, 0, 0};
            tx_backlog(f, &m);
            return;
        }
        leg_error(gm->leg, 1);
        off++;
    }
}

static void flush(msm_engine *e, msm_flow *f) {
    uint32_t off = 0, n = e->ntx;
    while (off < n) {
        /* One sendmmsg per run of messages leaving from the same socket (a leg's
         * messages are consecutive, so a flow of one family makes one run). */
        int fd = tx_fd(f, e->meta[off].leg);
        uint32_t end = off + 1;
        while (end < n && tx_fd(f, e->meta[end].leg) == fd)
            end++;
        int r = sendmmsg(fd, e->tx + off, end - off, MSG_DONTWAIT);
        if (r > 0) {
            for (uint32_t k = off; k < off + (uint32_t)r; k++)
                tx_sent(f, &e->meta[k]);
            off += r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && would_block(errno)) {
            /* The socket's send buffer is full: the rest of this run is
             * dropped and counted, as a real-time stream cannot wait. */
            for (uint32_t k = off; k < end; k++)
                tx_backlog(f, &e->meta[k]);
            off = end;
            continue;
        }
        /* This one message failed (unreachable network, refused GSO...);
         * the others go on. */
        if (r < 0 && e->meta[off].seg && gso_refused(errno)) {
            __atomic_store_n(&e->meta[off].leg->gso_disabled, 1, __ATOMIC_RELAXED);
            send_each(f, &e->tx[off].msg_hdr, &e->meta[off]);
        } else {
            leg_error(e->meta[off].leg, e->meta[off].npk);
        }
        off++;
    }
    e->ntx = 0;
    e->scratch_used = 0;
    e->siov_used = 0;
}

static void add_msg(msm_engine *e, msm_flow *f, msm_leg *leg, struct iovec *iov, uint32_t n, uint32_t bytes,
                    txctl_t *ctl, uint32_t seg) {
    struct msghdr *h = &e->tx[e->ntx].msg_hdr;
    h->msg_name = &leg->addr;
    h->msg_namelen = leg->addrlen;
    h->msg_iov = iov;
    h->msg_iovlen = n;
    h->msg_control = ctl ? ctl->buf : NULL;
    h->msg_controllen = ctl ? CTL_TX_SPACE : 0;
    h->msg_flags = 0;
    e->meta[e->ntx] = (txmeta){leg, n, bytes, seg};
    if (++e->ntx == TX_CHUNK)
        flush(e, f);
}

/* GSO runs of a batch: packets of equal size (the last may be shorter), each
 * grown by `grow` bytes once sent (the SRTP tag for SRTP legs, 0 for plain
 * ones), at most GSO_MAX_SEGS and GSO_MAX_BYTES a run; fills runs[] and their
 * UDP_SEGMENT control messages. Returns 0 when no run is longer than one
 * packet (plain messages then). */
static uint32_t gso_runs(msm_engine *e, uint32_t npk, uint32_t grow, run *runs, txctl_t *ctl) {
    uint32_t nr = 0, i = 0;
    while (i < npk) {
        uint32_t seg = (uint32_t)e->pk[i].iov_len + grow, j = i + 1, bytes = seg;
        uint32_t maxn = GSO_MAX_BYTES / seg;
        if (maxn > GSO_MAX_SEGS)
            maxn = GSO_MAX_SEGS;
        while (j < npk && j - i < maxn && e->pk[j].iov_len + grow == seg)
            bytes += seg, j++;
        if (j < npk && j - i < maxn && e->pk[j].iov_len + grow < seg)
            bytes += (uint32_t)e->pk[j].iov_len + grow, j++;
        runs[nr] = (run){i, j - i, seg, bytes};
        if (j - i > 1) {
            struct cmsghdr *c = &ctl[nr].align;
            uint16_t s16 = (uint16_t)seg;
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            memcpy(CMSG_DATA(c), &s16, sizeof s16);
        }
        nr++;
        i = j;
    }
    return nr == npk ? 0 : nr;
}

/* An SRTP leg: each packet is copied into the scratch area and protected
 * with the leg's key (no allocation: scratch and siov belong to the engine
 * and are reused after every flush). With runs (nsruns > 0) the protected
 * copies of a run go as one GSO super-datagram, as plain legs' do; a packet
 * that fails to protect is left out of its run (the rest keep their sizes). */
static void fanout_srtp(msm_engine *e, msm_flow *f, msm_leg *leg, const srtpkeys *sk, uint32_t npk,
                        uint32_t nsruns) {
    uint32_t nmsg = nsruns ? nsruns : npk, tag = sk->tag;
    void *session = sk->cur;
    for (uint32_t r = 0; r < nmsg; r++) {
        uint32_t start = nsruns ? e->sruns[r].start : r, n = nsruns ? e->sruns[r].n : 1, sent = 0, bytes = 0;
        uint32_t need = nsruns ? e->sruns[r].bytes : (uint32_t)e->pk[r].iov_len + tag;
        struct iovec *iov;
        need += n * (SRTP_TRAILER + 15); /* tag room and alignment */
        if (e->scratch_used + need > SRTP_SCRATCH || e->siov_used + n > TX_CHUNK)
            flush(e, f); /* sends what points into scratch, then reuses it */
        iov = &e->siov[e->siov_used];
        for (uint32_t k = start; k < start + n; k++) {
            uint32_t in = (uint32_t)e->pk[k].iov_len, len = in;
            uint8_t *out = e->scratch + e->scratch_used;
            if (len + SRTP_TRAILER > MAX_DATAGRAM) {
                BUMP(leg->send_errors, 1);
                continue;
            }
            memcpy(out, e->pk[k].iov_base, len);
            if (!srtp_seal(session, out, &len) || (n > 1 && len != in + tag)) {
                BUMP(leg->send_errors, 1);
                continue;
            }
            e->scratch_used += (len + 15) & ~15u;
            iov[sent].iov_base = out;
            iov[sent].iov_len = len;
            bytes += len;
            sent++;
        }
        if (!sent)
            continue;
        e->siov_used += sent;
        add_msg(e, f, leg, iov, sent, bytes, sent > 1 ? &e->sruntctl[r] : NULL, sent > 1 ? e->sruns[r].seg : 0);
    }
}

/* Fans the batch out: per leg, runs of equal-sized packets (the last may be
 * shorter) go as one GSO super-datagram; iovecs point into the receive
 * buffers, so no leg costs a copy in user space. */
static void fanout(msm_engine *e, msm_flow *f, const legset *ls, uint32_t npk) {
    uint32_t nruns = 0, srtp_nruns = 0, srtp_runs_tag = 0; /* sruns are for that tag size (0: none yet) */
    if ((e->features & MSM_FEATURE_GSO) && npk > 1)
        nruns = gso_runs(e, npk, 0, e->runs, e->runctl);
    for (uint32_t t = 0; t < ls->ntargets; t++) {
        msm_leg *leg = ls->targets[t];
        const srtpkeys *sk;
        uint32_t nsruns = 0;
        if (!leg->family) {
            BUMP(leg->send_errors, npk);
            continue;
        }
        sk = __atomic_load_n(&leg->srtp, __ATOMIC_ACQUIRE);
        if (sk) {
            if (nruns && !LOAD(leg->gso_disabled)) {
                if (srtp_runs_tag != sk->tag) { /* legs of one profile share them; a mix recomputes */
                    if (srtp_runs_tag && e->ntx)
                        flush(e, f); /* what is queued points at sruntctl's segment sizes: send it first */
                    srtp_nruns = gso_runs(e, npk, sk->tag, e->sruns, e->sruntctl), srtp_runs_tag = sk->tag;
                }
                nsruns = srtp_nruns;
            }
            fanout_srtp(e, f, leg, sk, npk, nsruns);
            continue;
        }
        if (nruns && !LOAD(leg->gso_disabled)) {
            for (uint32_t r = 0; r < nruns; r++) {
                run *ru = &e->runs[r];
                add_msg(e, f, leg, &e->pk[ru->start], ru->n, ru->bytes, ru->n > 1 ? &e->runctl[r] : NULL,
                        ru->n > 1 ? ru->seg : 0);
            }
        } else {
            for (uint32_t i = 0; i < npk; i++)
                add_msg(e, f, leg, &e->pk[i], 1, (uint32_t)e->pk[i].iov_len, NULL, 0);
        }
    }
    if (e->ntx)
        flush(e, f);
}

static void serve(msm_engine *e, msm_flow *f) {
    for (int round = 0; round < RX_ROUNDS; round++) {
        int n;
        const legset *ls;
        uint32_t npk;
        for (int i = 0; i < RX_BATCH; i++) {
            e->rx[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
            e->rx[i].msg_hdr.msg_controllen = CTL_RX_SPACE;
            e->rx[i].msg_hdr.msg_flags = 0;
        }
        n = recvmmsg(f->fd, e->rx, RX_BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno != EINTR)
                BUMP(f->socket_errors, 1); /* e.g. a queued ICMP error: read and go on */
            continue;
        }
        if (n == 0)
            return;
        e->iter_packets += (uint32_t)n;
        ls = __atomic_load_n(&f->legs, __ATOMIC_ACQUIRE);
        npk = ingest(e, f, ls, n);
        BUMP(f->batches, 1);
        if (npk && ls && ls->ntargets)
            fanout(e, f, ls, npk);
        if (n < RX_BATCH)
            return;
    }
}

static int64_t mono_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void *engine_main(void *arg) {
    msm_engine *e = arg;
    struct epoll_event ev[MAX_EVENTS];
    /* Sleeps of tens of microseconds must not be stretched by the default 50 us slack. */
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    while (!__atomic_load_n(&e->stop, __ATOMIC_ACQUIRE)) {
        int n;
        int64_t waited;
        uint32_t window = __atomic_load_n(&e->coalesce_ns, __ATOMIC_RELAXED);
        reclaim(e); /* quiescent point: no flow, leg or leg set is in use here */
        waited = mono_ns();
        n = epoll_wait(e->epfd, ev, MAX_EVENTS, -1);
        waited = mono_ns() - waited;
        e->iter_packets = 0;
        if (n < 0) {
            if (errno != EINTR) {
                struct timespec pause = {0, 10 * 1000 * 1000};
                nanosleep(&pause, NULL);
            }
            continue;
        }
        BUMP(e->loops, 1);
        BUMP(e->events, n);
        for (int i = 0; i < n; i++) {
            msm_flow *f = ev[i].data.ptr;
            if (!f) {
                uint64_t v;
                ssize_t r = read(e->evfd, &v, sizeof v);
                (void)r;
                continue;
            }
            /* A flow closed after epoll_wait returned is still allocated
             * (freed at the next quiescent point) but must not be served. */
            if (__atomic_load_n(&f->dead, __ATOMIC_ACQUIRE))
                continue;
            serve(e, f);
        }
        /* Dense traffic (packets were waiting, or came within the window) and
         * no full batch: let the next ones gather. A full batch means
         * overload, where waiting would only lose packets. */
        if (window && e->iter_packets && e->iter_packets < RX_BATCH && waited < (int64_t)window) {
            struct timespec pause = {0, (long)window};
            nanosleep(&pause, NULL);
            BUMP(e->coalesced, 1);
        }
    }
    return NULL;
}

void msm_engine_set_coalesce(msm_engine *e, uint32_t usec) {
    __atomic_store_n(&e->coalesce_ns, usec > 1000000 ? 1000000000u : usec * 1000u, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ public API */

static int probe_features(int want) {
    int got = 0, one = 1, seg = 1200;
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return 0;
    if ((want & MSM_FEATURE_GSO) && !setsockopt(s, SOL_UDP, UDP_SEGMENT, &seg, sizeof seg))
        got |= MSM_FEATURE_GSO;
    if ((want & MSM_FEATURE_GRO) && !setsockopt(s, SOL_UDP, UDP_GRO, &one, sizeof one))
        got |= MSM_FEATURE_GRO;
    if ((want & MSM_FEATURE_TIMESTAMPS) && !setsockopt(s, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one))
        got |= MSM_FEATURE_TIMESTAMPS;
    close(s);
    return got;
}

msm_engine *msm_engine_new(int want, char *err, size_t errlen) {
    msm_engine *e = calloc(1, sizeof *e);
    pthread_condattr_t ca;
    sigset_t all, old;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    int rc;
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    e->epfd = e->evfd = -1;
    e->slots = malloc((size_t)RX_BATCH * RX_SLOT);
    if (!e->slots) {
        snprintf(err, errlen, "out of memory for receive buffers");
        goto fail;
    }
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    e->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->epfd < 0 || e->evfd < 0 || epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->evfd, &ev) < 0) {
        snprintf(err, errlen, "epoll/eventfd: %s", strerror(errno));
        goto fail;
    }
    e->features = probe_features(want);
    e->scratch = malloc(SRTP_SCRATCH);
    if (!e->scratch) {
        snprintf(err, errlen, "out of memory for SRTP buffers");
        goto fail;
    }
    if (__atomic_load_n(&srtp_ready, __ATOMIC_ACQUIRE)) /* msm_srtp_load succeeded before */
        e->features |= MSM_FEATURE_SRTP | (srtp_gcm ? MSM_FEATURE_SRTP_GCM : 0);
    for (int i = 0; i < RX_BATCH; i++) {
        e->rxiov[i].iov_base = e->slots + (size_t)i * RX_SLOT;
        e->rxiov[i].iov_len = RX_SLOT;
        e->rx[i].msg_hdr.msg_iov = &e->rxiov[i];
        e->rx[i].msg_hdr.msg_iovlen = 1;
        e->rx[i].msg_hdr.msg_name = &e->rxaddr[i];
        e->rx[i].msg_hdr.msg_control = e->rxctl[i].buf;
    }
    pthread_mutex_init(&e->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&e->cv, &ca);
    pthread_condattr_destroy(&ca);
    /* Signals stay with Python's main thread. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&e->thread, NULL, engine_main, e);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        snprintf(err, errlen, "pthread_create: %s", strerror(rc));
        pthread_mutex_destroy(&e->mu);
        pthread_cond_destroy(&e->cv);
        goto fail;
    }
    e->alive = 1;
    return e;
fail:
    if (e->epfd >= 0)
        close(e->epfd);
    if (e->evfd >= 0)
        close(e->evfd);
    free(e->slots);
    free(e->scratch);
    free(e);
    return NULL;
}

int msm_engine_features(msm_engine *e) {
    return e->features;
}

void msm_engine_info_get(msm_engine *e, msm_engine_info *out) {
    out->loops = LOAD(e->loops);
    out->events = LOAD(e->events);
    out->reclaimed = LOAD(e->reclaimed);
    out->coalesced = LOAD(e->coalesced);
    out->features = (uint32_t)e->features;
    pthread_mutex_lock(&e->mu);
    out->flows = e->nflows;
    pthread_mutex_unlock(&e->mu);
}

void msm_engine_free(msm_engine *e) {
    if (!e)
        return;
    if (e->alive) {
        __atomic_store_n(&e->stop, 1, __ATOMIC_RELEASE);
        wake(e);
        pthread_join(e->thread, NULL);
        e->alive = 0;
    }
    reclaim(e);
    while (e->flows) {
        msm_flow *f = e->flows;
        e->flows = f->next;
        free_flow(e, f);
    }
    close(e->epfd);
    close(e->evfd);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e->slots);
    free(e->scratch);
    free(e);
}

msm_flow *msm_flow_new(msm_engine *e, int fd, uint32_t clock_rate, int splice, uint32_t takeover_ms) {
    msm_flow *f = calloc(1, sizeof *f);
    int one = 1, size = SOCK_BUF;
    struct epoll_event ev;
    if (!f) {
        errno = ENOMEM;
        return NULL;
    }
    f->fd = fd;
    f->clock_rate = clock_rate;
    f->splice = splice;
    f->takeover_ns = (int64_t)takeover_ms * 1000000;
    msm_rtpstats_init(&f->st.rs, clock_rate, 1);
    if (e->features & MSM_FEATURE_TIMESTAMPS)
        setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
    if (e->features & MSM_FEATURE_GRO)
        setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof one);
    /* Bigger buffers where privileged; otherwise what the caller set stays. */
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
    pthread_mutex_lock(&e->mu);
    f->next = e->flows;
    if (e->flows)
        e->flows->prev = f;
    e->flows = f;
    e->nflows++;
    pthread_mutex_unlock(&e->mu);
    ev.events = EPOLLIN;
    ev.data.ptr = f;
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        int saved = errno;
        pthread_mutex_lock(&e->mu);
        if (f->prev)
            f->prev->next = f->next;
        else
            e->flows = f->next;
        if (f->next)
            f->next->prev = f->prev;
        e->nflows--;
        pthread_mutex_unlock(&e->mu);
        free(f);
        errno = saved;
        return NULL;
    }
    return f;
}

int msm_flow_set_legs(msm_engine *e, msm_flow *f, msm_leg **legs, const uint8_t *enabled, uint32_t n) {
    legset *ls = malloc(sizeof *ls + 2 * (size_t)n * sizeof(msm_leg *) + 1);
    legset *old;
    if (!ls)
        return -1;
    ls->all = (msm_leg **)(ls + 1);
    ls->targets = ls->all + n;
    ls->nlegs = n;
    ls->ntargets = 0;
    for (uint32_t i = 0; i < n; i++) {
        ls->all[i] = legs[i];
        if (enabled[i])
            ls->targets[ls->ntargets++] = legs[i];
    }
    ls->gen = __atomic_add_fetch(&e->legset_gen, 1, __ATOMIC_RELAXED);
    old = __atomic_exchange_n(&f->legs, ls, __ATOMIC_ACQ_REL);
    if (old) {
        if (e->alive)
            retire(e, free_plain, old);
        else
            free(old);
    }
    return 0;
}

int msm_flow_set_source(msm_engine *e, msm_flow *f, int family, const uint8_t *addr, uint16_t port) {
    srcfilter *sf = NULL, *old;
    if (family == AF_INET || family == AF_INET6) {
        sf = calloc(1, sizeof *sf);
        if (!sf)
            return -1;
        if (family == AF_INET) {
            struct sockaddr_in *a = (void *)&sf->addr;
            a->sin_family = AF_INET;
            a->sin_port = htons(port);
            memcpy(&a->sin_addr, addr, 4);
        } else {
            struct sockaddr_in6 *a = (void *)&sf->addr;
            a->sin6_family = AF_INET6;
            a->sin6_port = htons(port);
            memcpy(&a->sin6_addr, addr, 16);
        }
        sf->any_port = port == 0;
        /* Shares the leg sets' counter: every published change has its own generation. */
        sf->gen = __atomic_add_fetch(&e->legset_gen, 1, __ATOMIC_RELAXED);
    }
    old = __atomic_exchange_n(&f->source, sf, __ATOMIC_ACQ_REL);
    if (old) {
        if (e->alive)
            retire(e, free_plain, old);
        else
            free(old);
    }
    return 0;
}

void msm_flow_stats_get(msm_flow *f, msm_flow_stats *o) {
    flow_state s;
    for (;;) {
        uint32_t a = __atomic_load_n(&f->seq, __ATOMIC_ACQUIRE);
        if (a & 1) {
            sched_yield();
            continue;
        }
        memcpy(&s, &f->st, sizeof s);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&f->seq, __ATOMIC_RELAXED) == a)
            break;
    }
    memset(o, 0, sizeof *o);
    o->packets_received = s.packets_received;
    o->bytes_received = s.bytes_received;
    o->dropped_invalid = s.dropped_invalid;
    o->dropped_from_viewers = s.dropped_from_viewers;
    o->dropped_wrong_source = s.dropped_wrong_source;
    o->dropped_wrong_ssrc = s.dropped_wrong_ssrc;
    o->srtp_errors = s.srtp_errors;
    o->source_changes = s.source_changes;
    o->lost_before = s.lost_before;
    o->expected_before = s.expected_before;
    o->ssrc = s.ssrc;
    o->has_ssrc = s.has_ssrc;
    o->out_ssrc = s.out_ssrc;
    o->has_out_ssrc = s.has_out;
    o->seq_offset = s.seq_offset;
    o->ts_offset = s.ts_offset;
    o->has_out_info = s.has_last_out;
    o->first_out_seq = s.first_out_seq;
    o->first_out_ts = s.first_out_ts;
    o->last_out_seq = s.last_out_seq;
    o->last_out_ts = s.last_out_ts;
    o->received = s.rs.received;
    o->expected = msm_rtpstats_expected(&s.rs);
    o->extended_highest = rs_highest(&s.rs);
    o->duplicates = s.rs.duplicates;
    o->reordered = s.rs.reordered;
    o->restarts = s.rs.restarts;
    o->gen = s.rs.gen;
    o->jitter = s.rs.jitter;
    o->packets_forwarded = LOAD(f->packets_forwarded);
    o->dropped_backlog = LOAD(f->dropped_backlog);
    o->socket_errors = LOAD(f->socket_errors);
    o->batches = LOAD(f->batches);
}

static void msm_leg_retire_async(msm_engine *e, msm_leg *l) {
    if (e->alive)
        retire(e, free_leg, l);
    else
        free_leg(e, l);
}

/* The tag size of `profile` if this engine can do it with this key; else 0
 * and errno: ENOTSUP (no SRTP), EPROTONOSUPPORT (not this profile), EINVAL. */
static uint32_t srtp_ok(msm_engine *e, int profile, const uint8_t *key, uint32_t keylen) {
    int gcm = profile == MSM_SRTP_AEAD_AES_128_GCM;
    if (!(e->features & MSM_FEATURE_SRTP)) {
        errno = ENOTSUP;
        return 0;
    }
    if ((!gcm && profile != MSM_SRTP_AES_CM_128_HMAC_SHA1_80) || (gcm && !(e->features & MSM_FEATURE_SRTP_GCM))) {
        errno = EPROTONOSUPPORT;
        return 0;
    }
    if (!key || keylen != (gcm ? SRTP_GCM_KEYLEN : SRTP_CM_KEYLEN)) {
        errno = EINVAL;
        return 0;
    }
    return gcm ? SRTP_GCM_TAG : SRTP_CM_TAG;
}

/* A new set for `profile` with its current session; NULL with errno. */
static srtpkeys *srtp_keys(msm_engine *e, int profile, const uint8_t *key, uint32_t keylen, int inbound) {
    srtpkeys *k;
    uint32_t tag = srtp_ok(e, profile, key, keylen);
    if (!tag)
        return NULL;
    k = calloc(1, sizeof *k);
    if (!k) {
        errno = ENOMEM;
        return NULL;
    }
    k->tag = tag;
    if (!(k->cur = srtp_session(profile, key, inbound))) {
        free(k);
        errno = EINVAL;
        return NULL;
    }
    return k;
}

static void retire_keys(msm_engine *e, srtpkeys *old) {
    if (!old)
        return;
    if (e->alive)
        retire(e, free_srtpkeys, old);
    else
        free_srtpkeys(e, old);
}

int msm_flow_set_srtp(msm_engine *e, msm_flow *f, int profile, const uint8_t *key, uint32_t keylen,
                      uint32_t grace_ms) {
    srtpkeys *old, *k = srtp_keys(e, profile, key, keylen, 1);
    if (!k)
        return -1;
    old = __atomic_load_n(&f->srtp, __ATOMIC_ACQUIRE); /* only this (Python) thread publishes */
    if (old) {
        /* The old current key stays acceptable for the grace period; the
         * key before it (old->prev) goes with the old set. */
        k->prev = old->cur;
        k->prev_until_ns = realtime_ns() + (int64_t)grace_ms * 1000000;
        old->owns_prev = 1;
    }
    __atomic_store_n(&f->srtp, k, __ATOMIC_RELEASE);
    retire_keys(e, old);
    return 0;
}

int msm_leg_set_srtp(msm_engine *e, msm_leg *l, int profile, const uint8_t *key, uint32_t keylen) {
    srtpkeys *old, *k = srtp_keys(e, profile, key, keylen, 0);
    if (!k)
        return -1;
    /* The old set is not touched (the engine thread may be protecting with it
     * right now): it goes whole, session included, at a quiescent point. */
    old = __atomic_exchange_n(&l->srtp, k, __ATOMIC_ACQ_REL);
    if (old) {
        if (e->alive)
            retire(e, free_srtpkeys_whole, old);
        else
            free_srtpkeys_all(old);
    }
    return 0;
}

/* Returns once the engine thread passed a quiescent point (1), or after
 * timeout_ms (0). Anything unpublished before the call is no longer in use. */
static int quiesce(msm_engine *e, int timeout_ms) {
    uint64_t t;
    int passed = 1;
    struct timespec deadline;
    if (!e->alive)
        return 1;
    t = retire(e, NULL, NULL);
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&e->mu);
    while (e->freed_gen <= t) {
        if (pthread_cond_timedwait(&e->cv, &e->mu, &deadline) == ETIMEDOUT) {
            passed = e->freed_gen > t;
            break;
        }
    }
    pthread_mutex_unlock(&e->mu);
    return passed;
}

int msm_flow_set_alt_fd(msm_engine *e, msm_flow *f, int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int size = SOCK_BUF;
    (void)e;
    if (__atomic_load_n(&f->alt_family, __ATOMIC_ACQUIRE)) {
        errno = EEXIST;
        return -1;
    }
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return -1;
    if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) {
        errno = EAFNOSUPPORT;
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
    f->alt_fd = fd;
    __atomic_store_n(&f->alt_family, (int)ss.ss_family, __ATOMIC_RELEASE);
    return 0;
}

void msm_flow_close(msm_engine *e, msm_flow *f, int timeout_ms, msm_flow_stats *final) {
    epoll_ctl(e->epfd, EPOLL_CTL_DEL, f->fd, NULL);
    __atomic_store_n(&f->dead, 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&e->mu);
    if (f->prev)
        f->prev->next = f->next;
    else
        e->flows = f->next;
    if (f->next)
        f->next->prev = f->prev;
    e->nflows--;
    pthread_mutex_unlock(&e->mu);
    if (quiesce(e, timeout_ms)) {
        if (final)
            msm_flow_stats_get(f, final);
        free_flow(e, f);
    } else {
        /* The thread is wedged: let it free the flow when it comes back. */
        if (final)
            msm_flow_stats_get(f, final);
        retire(e, free_flow, f);
    }
}

msm_leg *msm_leg_new(int family, const uint8_t *addr, uint16_t port, uint32_t scope_id) {
    msm_leg *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    if (family == AF_INET) {
        struct sockaddr_in *a = (void *)&l->addr;
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        memcpy(&a->sin_addr, addr, 4);
        l->addrlen = sizeof *a;
        l->family = AF_INET;
    } else if (family == AF_INET6) {
        struct sockaddr_in6 *a = (void *)&l->addr;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        memcpy(&a->sin6_addr, addr, 16);
        a->sin6_scope_id = scope_id;
        l->addrlen = sizeof *a;
        l->family = AF_INET6;
    }
    return l;
}

void msm_leg_stats_get(msm_leg *l, msm_leg_stats *o) {
    o->packets_sent = LOAD(l->packets_sent);
    o->bytes_sent = LOAD(l->bytes_sent);
    o->send_errors = LOAD(l->send_errors);
    o->dropped_backlog = LOAD(l->dropped_backlog);
    o->gso_sends = LOAD(l->gso_sends);
    o->mtu_exceeded = LOAD(l->mtu_exceeded);
    o->gso_disabled = LOAD(l->gso_disabled);
    o->resolved = l->family != 0;
}

void msm_leg_free(msm_engine *e, msm_leg *l, int timeout_ms, msm_leg_stats *final) {
    int passed;
    if (timeout_ms <= 0) { /* do not wait: freed at the thread's next quiescent point */
        if (final)
            msm_leg_stats_get(l, final);
        msm_leg_retire_async(e, l);
        return;
    }
    passed = quiesce(e, timeout_ms);
    if (final)
        msm_leg_stats_get(l, final);
    if (passed)
        free_leg(e, l);
    else
        retire(e, free_leg, l);
}
