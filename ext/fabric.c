/* msm libfabric link (see fabric.h for the protocol). */
#define _GNU_SOURCE
#include "fabric.h"

#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>
#include <time.h>

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_tagged.h>

#define FAB_VERSION FI_VERSION(1, 17)
#define TAG_FRAME 0x4d534d46ULL /* "MSMF" */
#define TAG_CTRL 0x4d534d43ULL /* "MSMC" */
#define FRAME_MAGIC 0x4d534d46U
#define CTRL_MAGIC 0x4d534d43U
#define FRAME_VERSION 1
#define CTRL_HELLO 1 /* here is my grant; answer with yours */
#define CTRL_GRANT 2 /* here is my grant */
#define CTRL_ALIAS 3 /* frames to you come from this endpoint of mine (name follows) */
#define CTRL_HEAD 32 /* bytes of a hello or grant: magic, kind, granted, epoch, your_epoch */
#define ALIAS_NAME_MAX 64
/* Control receive buffers per peer: grants are cumulative, so one posted
 * buffer per peer would do; a few absorb bursts of releases without leaning
 * on the provider's unexpected-message queue. */
#define CTRL_RX_PER_PEER 4
#define CTRL_RX_EXTRA 8
#define CQ_BATCH 16
/* The payload starts at a multiple of this in the message (header and metadata are padded):
 * copies into a cache-line-aligned destination run at full speed (rep movsb, CMA). */
#define PAYLOAD_ALIGN 64
#define PAD(n) (((n) + PAYLOAD_ALIGN - 1) & ~(size_t)(PAYLOAD_ALIGN - 1))
/* A receive queue sized for every buffer rarely says EAGAIN; retry a few times, then leave the buffer idle. */
#define POST_TRIES 100
#define MAX_PEERS_LIMIT 1024 /* the address vector and the peer table are arrays of this many at most */
/* Frame buffers posted at once on shm (the rest wait on a stack, the most recently
 * released on top). shm copies a frame into the buffer it matches (CMA), and
 * matches posted buffers in the order they were posted: with every buffer posted,
 * a link cycles through credits x peers frame buffers, most of them out of the
 * CPU's cache by their turn (4 x 5 MB per side for 1080p 10-bit). With one posted
 * and the last released reposted first, frames land in cache-warm memory. A frame
 * that finds none posted waits in shm's unexpected queue as a command (no copy)
 * and is copied when the next buffer is posted: at the next msm_fab_poll or release. */
#define RX_POSTED_SHM 1

static int64_t now_ns(void);

enum { SLOT_RX = 1, SLOT_CTRL = 2, SLOT_TX = 3 };

/* Every operation's context: libfabric hands it back in the completion. */
typedef struct slot {
    struct fi_context2 ctx; /* first: the completion's op_context points here */
    int kind;
    uint32_t index;
    int peer; /* RX: the frame's sender while held; TX: destination */
    int state; /* RX: 0 posted, 1 held by the caller, 2 idle; TX: 0 free, 1 in flight, 2 queued for a retry */
    uint64_t token;
    int64_t first_ns; /* TX queued: when the provider first said -FI_EAGAIN */
    size_t head; /* TX: bytes of header and metadata (the first iov) */
    const uint8_t *payload; /* TX: the caller's payload (the second iov) */
    uint64_t plen;
    struct fid_mr *mr; /* TX with FI_MR_LOCAL: the payload's registration */
} slot;

typedef struct ctrl_msg {
    uint32_t magic, kind;
    uint64_t granted; /* cumulative, for the incarnation of the receiver named by your_epoch */
    uint64_t epoch; /* the sender's incarnation (random per endpoint) */
    uint64_t your_epoch; /* the receiver's incarnation as the sender knows it (0: not yet) */
    uint32_t namelen; /* ALIAS only */
    uint8_t name[ALIAS_NAME_MAX];
    uint32_t pad_;
} ctrl_msg;

typedef struct peer {
    fi_addr_t addr;
    uint8_t name[64];
    size_t namelen;
    int hello_pending, grant_pending, alias_pending;
    int removed; /* msm_fab_remove_peer: its frames are dropped, nothing is sent to it */
    struct fid_ep *tx_ep; /* per_peer_tx: the endpoint frames to this peer leave from */
    uint8_t tx_name[ALIAS_NAME_MAX];
    size_t tx_namelen;
    uint64_t epoch; /* the peer's incarnation, from its control messages (0: not heard yet) */
    fi_addr_t alias; /* the endpoint the peer's frames come from, if not its own (FI_ADDR_NOTAVAIL) */
    uint64_t blocked_round; /* retry_queued's pass in which a send to it was refused (order per peer) */
    msm_fab_peer_stats st;
} peer;

struct msm_fab {
    struct fi_info *info;
    struct fid_fabric *fabric;
    struct fid_domain *domain;
    struct fid_av *av;
    struct fid_cq *cq;
    struct fid_ep *ep;
    struct fid_mr *rx_mr, *tx_mr, *ctrl_mr;
    int wait_fd, mr_local;
    /* One transmit endpoint per peer (shm): libfabric 1.17's shm completes an
     * endpoint's sends in order, so one peer that stops progressing would hold
     * up the completions to every other peer of a shared endpoint. */
    int per_peer_tx;
    /* This endpoint's incarnation: a peer that sees it change knows we restarted
     * (same address, fresh counters) and starts its accounting for us afresh. */
    uint64_t epoch;
    uint32_t credits, max_peers, max_meta;
    uint64_t max_frame;
    size_t rx_stride, tx_stride;
    uint32_t n_rx, n_tx, n_ctrl;
    uint8_t *rx_mem, *tx_mem;
    size_t rx_bytes, tx_bytes;
    ctrl_msg *ctrl_mem;
    slot *rx, *tx, *ctrl;
    uint32_t *tx_free, n_tx_free;
    uint32_t *rx_free, n_rx_free; /* frame buffers neither posted nor held, last released on top */
    uint32_t n_posted, rx_post_max; /* frame buffers posted now; most posted at once */
    /* Sends the provider refused for the moment, oldest first (at most n_tx). */
    uint32_t *tx_queue, n_queued;
    uint64_t retry_round; /* one pass of retry_queued: a peer refused in it is skipped for the rest of it */
    peer *peers;
    int n_peers;
    msm_fab_stats st;
};

static void say(char *err, size_t errlen, const char *fmt, const char *what, int rc) {
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, fmt, what, fi_strerror(rc < 0 ? -rc : rc));
}

static struct fi_info *hints_for(const char *provider) {
    struct fi_info *hints = fi_allocinfo();
    if (hints == NULL)
        return NULL;
    hints->caps = FI_TAGGED | FI_SEND | FI_RECV | FI_SOURCE;
    hints->mode = FI_CONTEXT | FI_CONTEXT2;
    hints->ep_attr->type = FI_EP_RDM;
    hints->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY;
    hints->domain_attr->threading = FI_THREAD_DOMAIN;
    hints->fabric_attr->prov_name = strdup(provider);
    return hints;
}

int msm_fab_probe(const char *provider, char *err, size_t errlen) {
    struct fi_info *hints = hints_for(provider), *info = NULL;
    if (hints == NULL)
        return -ENOMEM;
    int rc = fi_getinfo(FAB_VERSION, NULL, NULL, 0, hints, &info);
    fi_freeinfo(hints);
    if (rc != 0) {
        say(err, errlen, "libfabric offers no RDM endpoint for provider '%s' here (%s)", provider, rc);
        return rc;
    }
    fi_freeinfo(info);
    return 0;
}

static void *map(size_t bytes) {
    /* Anonymous mappings: page-aligned, zero-filled lazily, returned whole. */
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static int reg(msm_fab *f, void *buf, size_t len, uint64_t access, struct fid_mr **mr) {
    if (!f->mr_local)
        return 0;
    return fi_mr_reg(f->domain, buf, len, access, 0, 0, 0, mr, NULL);
}

static void *desc_of(struct fid_mr *mr) { return mr != NULL ? fi_mr_desc(mr) : NULL; }

static int post_rx(msm_fab *f, uint32_t i) {
    slot *s = &f->rx[i];
    s->peer = -1;
    int rc = -FI_EAGAIN;
    for (int tries = 0; rc == -FI_EAGAIN && tries < POST_TRIES; tries++) {
        rc = (int)fi_trecv(f->ep, f->rx_mem + (size_t)i * f->rx_stride, f->rx_stride, desc_of(f->rx_mr),
                           FI_ADDR_UNSPEC, TAG_FRAME, 0, &s->ctx);
    }
    if (rc != 0) {
        s->state = 2;
        f->rx_free[f->n_rx_free++] = i;
        return rc;
    }
    s->state = 0;
    f->n_posted++;
    return 0;
}

/* Post frame buffers from the top of the stack until rx_post_max are posted (or none is left). */
static int top_up_rx(msm_fab *f) {
    int rc = 0;
    while (rc == 0 && f->n_posted < f->rx_post_max && f->n_rx_free > 0)
        rc = post_rx(f, f->rx_free[--f->n_rx_free]);
    return rc;
}

/* A frame buffer back from the caller or from a dropped frame: posted again at once if fewer than
 * rx_post_max are, else on top of the stack (the next to be posted). */
static int recycle_rx(msm_fab *f, uint32_t i) {
    if (f->n_posted < f->rx_post_max)
        return post_rx(f, i);
    f->rx[i].state = 2;
    f->rx[i].peer = -1;
    f->rx_free[f->n_rx_free++] = i;
    return 0;
}

static int post_ctrl(msm_fab *f, uint32_t i) {
    int rc = -FI_EAGAIN;
    for (int tries = 0; rc == -FI_EAGAIN && tries < POST_TRIES; tries++) {
        rc = (int)fi_trecv(f->ep, &f->ctrl_mem[i], sizeof(ctrl_msg), desc_of(f->ctrl_mr), FI_ADDR_UNSPEC,
                           TAG_CTRL, 0, &f->ctrl[i].ctx);
    }
    return rc;
}

static int alloc_buffers(msm_fab *f) {
    f->rx_stride = (PAD(MSM_FAB_HEADER_BYTES + f->max_meta) + f->max_frame + 4095) & ~(size_t)4095;
    f->tx_stride = PAD(MSM_FAB_HEADER_BYTES + f->max_meta);
    f->n_rx = f->credits * f->max_peers; /* every credit granted is a buffer posted, idle or held, never more */
    f->n_tx = f->credits * f->max_peers; /* in flight never exceeds the credits of all peers */
    f->n_ctrl = CTRL_RX_PER_PEER * f->max_peers + CTRL_RX_EXTRA;
    f->rx_bytes = f->rx_stride * f->n_rx;
    f->tx_bytes = f->tx_stride * f->n_tx;
    f->rx_mem = map(f->rx_bytes);
    f->tx_mem = map(f->tx_bytes);
    f->ctrl_mem = calloc(f->n_ctrl, sizeof(ctrl_msg));
    f->rx = calloc(f->n_rx, sizeof(slot));
    f->rx_free = calloc(f->n_rx, sizeof(uint32_t));
    f->tx = calloc(f->n_tx, sizeof(slot));
    f->ctrl = calloc(f->n_ctrl, sizeof(slot));
    f->tx_free = calloc(f->n_tx, sizeof(uint32_t));
    f->tx_queue = calloc(f->n_tx, sizeof(uint32_t));
    f->peers = calloc(f->max_peers, sizeof(peer));
    if (!f->rx_mem || !f->tx_mem || !f->ctrl_mem || !f->rx || !f->rx_free || !f->tx || !f->ctrl || !f->tx_free ||
        !f->tx_queue || !f->peers)
        return -FI_ENOMEM;
    for (uint32_t i = 0; i < f->n_rx; i++) {
        f->rx[i] = (slot){.kind = SLOT_RX, .index = i, .peer = -1, .state = 2};
        f->rx_free[i] = f->n_rx - 1 - i; /* buffer 0 on top */
    }
    f->n_rx_free = f->n_rx;
    for (uint32_t i = 0; i < f->n_tx; i++) {
        f->tx[i] = (slot){.kind = SLOT_TX, .index = i, .peer = -1};
        f->tx_free[i] = f->n_tx - 1 - i;
    }
    f->n_tx_free = f->n_tx;
    for (uint32_t i = 0; i < f->n_ctrl; i++)
        f->ctrl[i] = (slot){.kind = SLOT_CTRL, .index = i, .peer = -1};
    int rc = reg(f, f->rx_mem, f->rx_bytes, FI_RECV, &f->rx_mr);
    if (rc == 0)
        rc = reg(f, f->tx_mem, f->tx_bytes, FI_SEND, &f->tx_mr);
    if (rc == 0)
        rc = reg(f, f->ctrl_mem, f->n_ctrl * sizeof(ctrl_msg), FI_RECV, &f->ctrl_mr);
    return rc;
}

static int open_cq(msm_fab *f) {
    struct fi_cq_attr attr = {.format = FI_CQ_FORMAT_TAGGED, .wait_obj = FI_WAIT_FD,
                              /* every operation we post can complete at once, plus slack for errors */
                              .size = f->n_rx + f->n_tx + f->n_ctrl + 64};
    f->wait_fd = -1;
    if (fi_cq_open(f->domain, &attr, &f->cq, NULL) == 0) {
        if (fi_control(&f->cq->fid, FI_GETWAIT, &f->wait_fd) != 0)
            f->wait_fd = -1;
        return 0;
    }
    attr.wait_obj = FI_WAIT_NONE;
    return fi_cq_open(f->domain, &attr, &f->cq, NULL);
}

static int open_ep(msm_fab *f, char *err, size_t errlen) {
    int rc = fi_fabric(f->info->fabric_attr, &f->fabric, NULL);
    if (rc != 0)
        return say(err, errlen, "%s: %s", "fi_fabric", rc), rc;
    rc = fi_domain(f->fabric, f->info, &f->domain, NULL);
    if (rc != 0)
        return say(err, errlen, "%s: %s", "fi_domain", rc), rc;
    f->mr_local = (f->info->domain_attr->mr_mode & FI_MR_LOCAL) != 0;
    rc = alloc_buffers(f);
    if (rc != 0)
        return say(err, errlen, "%s: %s", "receive buffers", rc), rc;
    f->per_peer_tx = strcmp(f->info->fabric_attr->prov_name, "shm") == 0;
    /* Each peer's own endpoint and, on shm, the one its frames come from. */
    struct fi_av_attr av_attr = {.type = FI_AV_TABLE, .count = 2 * f->max_peers};
    rc = fi_av_open(f->domain, &av_attr, &f->av, NULL);
    if (rc != 0)
        return say(err, errlen, "%s: %s", "fi_av_open", rc), rc;
    rc = open_cq(f);
    if (rc != 0)
        return say(err, errlen, "%s: %s", "fi_cq_open", rc), rc;
    rc = fi_endpoint(f->domain, f->info, &f->ep, NULL);
    if (rc == 0)
        rc = fi_ep_bind(f->ep, &f->av->fid, 0);
    if (rc == 0)
        rc = fi_ep_bind(f->ep, &f->cq->fid, FI_TRANSMIT | FI_RECV);
    if (rc == 0)
        rc = fi_enable(f->ep);
    if (rc != 0)
        return say(err, errlen, "%s: %s", "endpoint", rc), rc;
    f->rx_post_max = f->per_peer_tx ? RX_POSTED_SHM : f->n_rx;
    rc = top_up_rx(f);
    for (uint32_t i = 0; i < f->n_ctrl && rc == 0; i++)
        rc = post_ctrl(f, i);
    if (rc != 0)
        return say(err, errlen, "%s: %s", "posting receives", rc), rc;
    return 0;
}

msm_fab *msm_fab_open(const char *provider, const char *node, const char *service, uint64_t max_frame,
                      uint32_t max_meta, uint32_t credits, uint32_t max_peers, char *err, size_t errlen) {
    if (credits == 0 || max_peers == 0 || max_peers > MAX_PEERS_LIMIT || max_frame == 0) {
        say(err, errlen, "%s: %s", "bad limits (credits, max_peers, max_frame)", FI_EINVAL);
        return NULL;
    }
    struct fi_info *hints = hints_for(provider);
    msm_fab *f = calloc(1, sizeof(*f));
    if (hints == NULL || f == NULL) {
        fi_freeinfo(hints);
        free(f);
        return NULL;
    }
    f->credits = credits;
    f->max_peers = max_peers;
    f->max_meta = max_meta;
    f->max_frame = max_frame;
    f->wait_fd = -1;
    if (getrandom(&f->epoch, sizeof(f->epoch), 0) != sizeof(f->epoch) || f->epoch == 0)
        f->epoch = ((uint64_t)getpid() << 32) ^ (uint64_t)now_ns() ^ 1;
    int rc = fi_getinfo(FAB_VERSION, node, service, node || service ? FI_SOURCE : 0, hints, &f->info);
    fi_freeinfo(hints);
    if (rc != 0) {
        say(err, errlen, "libfabric offers no RDM endpoint for provider '%s' at this address (%s)", provider, rc);
        msm_fab_close(f);
        return NULL;
    }
    if (open_ep(f, err, errlen) != 0) {
        msm_fab_close(f);
        return NULL;
    }
    return f;
}

int msm_fab_getname(msm_fab *f, uint8_t *out, size_t *len) { return fi_getname(&f->ep->fid, out, len); }

static int send_ctrl(msm_fab *f, peer *p, uint32_t kind) {
    ctrl_msg m = {.magic = htole32(CTRL_MAGIC), .kind = htole32(kind), .granted = htole64(p->st.my_grant),
                  .epoch = htole64(f->epoch), .your_epoch = htole64(p->epoch)};
    size_t len = CTRL_HEAD;
    if (kind == CTRL_ALIAS) {
        m.namelen = htole32((uint32_t)p->tx_namelen);
        memcpy(m.name, p->tx_name, p->tx_namelen);
        len = CTRL_HEAD + sizeof(uint32_t) + p->tx_namelen;
    }
    return (int)fi_tinject(f->ep, &m, len, p->addr, TAG_CTRL);
}

/* Pending hellos and grants go out here; a full transmit queue leaves them pending. */
static void flush_ctrl(msm_fab *f) {
    for (int i = 0; i < f->n_peers; i++) {
        peer *p = &f->peers[i];
        if (p->removed)
            continue;
        if (p->alias_pending && send_ctrl(f, p, CTRL_ALIAS) == 0) /* before the grant it answers */
            p->alias_pending = 0;
        if (p->hello_pending && send_ctrl(f, p, CTRL_HELLO) == 0)
            p->hello_pending = p->grant_pending = 0;
        if (p->grant_pending && send_ctrl(f, p, CTRL_GRANT) == 0)
            p->grant_pending = 0;
    }
}

static int open_tx_ep(msm_fab *f, peer *p) {
    int rc = fi_endpoint(f->domain, f->info, &p->tx_ep, NULL);
    if (rc == 0)
        rc = fi_ep_bind(p->tx_ep, &f->av->fid, 0);
    if (rc == 0)
        rc = fi_ep_bind(p->tx_ep, &f->cq->fid, FI_TRANSMIT | FI_RECV);
    if (rc == 0)
        rc = fi_enable(p->tx_ep);
    p->tx_namelen = sizeof(p->tx_name);
    if (rc == 0)
        rc = fi_getname(&p->tx_ep->fid, p->tx_name, &p->tx_namelen);
    if (rc != 0 && p->tx_ep != NULL) {
        fi_close(&p->tx_ep->fid);
        p->tx_ep = NULL;
    }
    p->alias_pending = rc == 0;
    return rc;
}

int msm_fab_add_peer(msm_fab *f, const uint8_t *addr, size_t len, char *err, size_t errlen) {
    for (int i = 0; i < f->n_peers; i++) {
        peer *p = &f->peers[i];
        if (p->namelen == len && memcmp(p->name, addr, len) == 0) {
            if (p->removed) { /* back again: same id, same address vector entry */
                p->removed = 0;
                p->hello_pending = 1;
                p->alias_pending = p->tx_ep != NULL;
                flush_ctrl(f);
            }
            return i;
        }
    }
    if ((uint32_t)f->n_peers >= f->max_peers) {
        say(err, errlen, "%s: %s", "peer table full (max_peers)", FI_ENOSPC);
        return -FI_ENOSPC;
    }
    if (len == 0 || len > sizeof(f->peers[0].name)) {
        say(err, errlen, "%s: %s", "bad peer address length", FI_EINVAL);
        return -FI_EINVAL;
    }
    peer *p = &f->peers[f->n_peers];
    memset(p, 0, sizeof(*p));
    int rc = fi_av_insert(f->av, addr, 1, &p->addr, 0, NULL);
    if (rc != 1) {
        say(err, errlen, "%s: %s", "fi_av_insert refused the address", rc < 0 ? rc : FI_EINVAL);
        return rc < 0 ? rc : -FI_EINVAL;
    }
    memcpy(p->name, addr, len);
    p->namelen = len;
    p->alias = FI_ADDR_NOTAVAIL;
    if (f->per_peer_tx && (rc = open_tx_ep(f, p)) != 0) {
        say(err, errlen, "%s: %s", "the peer's transmit endpoint", rc);
        return rc;
    }
    p->st.my_grant = f->credits;
    p->hello_pending = 1;
    f->st.peers = ++f->n_peers;
    flush_ctrl(f);
    return f->n_peers - 1;
}

int msm_fab_remove_peer(msm_fab *f, int pid) {
    if (pid < 0 || pid >= f->n_peers || f->peers[pid].removed)
        return -FI_EINVAL;
    peer *p = &f->peers[pid];
    p->removed = 1;
    p->hello_pending = p->grant_pending = p->alias_pending = 0;
    return 0;
}

static int find_peer(msm_fab *f, fi_addr_t addr) {
    if (addr == FI_ADDR_NOTAVAIL || addr == FI_ADDR_UNSPEC)
        return -1;
    for (int i = 0; i < f->n_peers; i++)
        if (f->peers[i].addr == addr || f->peers[i].alias == addr)
            return i;
    return -1;
}

static void put_le(uint8_t *b, uint32_t magic, uint32_t group, uint32_t meta_len, uint64_t seq, uint64_t ts,
                   uint64_t plen) {
    uint32_t w32[4] = {htole32(magic), htole32(FRAME_VERSION), htole32(group), htole32(meta_len)};
    uint64_t w64[3] = {htole64(seq), htole64(ts), htole64(plen)};
    memcpy(b, w32, sizeof(w32));
    memcpy(b + sizeof(w32), w64, sizeof(w64));
}

static void tx_done(msm_fab *f, slot *s) {
    if (s->mr != NULL)
        fi_close(&s->mr->fid);
    s->mr = NULL;
    s->state = 0;
    if (s->peer >= 0)
        f->peers[s->peer].st.tx_pending--;
    f->tx_free[f->n_tx_free++] = s->index;
}

static int post_tx(msm_fab *f, slot *s) {
    peer *p = &f->peers[s->peer];
    uint8_t *hdr = f->tx_mem + (size_t)s->index * f->tx_stride;
    struct iovec iov[2] = {{hdr, s->head}, {(void *)s->payload, s->plen}};
    void *desc[2] = {desc_of(f->tx_mr), desc_of(s->mr)};
    struct fi_msg_tagged msg = {.msg_iov = iov, .desc = desc, .iov_count = s->plen > 0 ? 2 : 1,
                                .addr = p->addr, .tag = TAG_FRAME, .context = &s->ctx};
    return (int)fi_tsendmsg(p->tx_ep != NULL ? p->tx_ep : f->ep, &msg, FI_COMPLETION);
}

/* A taken send that will never be posted: its slot back, its credit back, counted. */
static void tx_drop(msm_fab *f, slot *s) {
    peer *p = &f->peers[s->peer];
    if (p->st.sent > 0)
        p->st.sent--;
    p->st.tx_frames--;
    p->st.tx_bytes -= s->plen;
    tx_done(f, s);
}

/* Retry the queued sends, oldest first; a peer's later sends wait behind its first refused one (order
 * per peer). With events, those refused for longer than MSM_FAB_RETRY_MS become SEND_ERROR events. */
static int retry_queued(msm_fab *f, msm_fab_event *events, int max) {
    int n = 0;
    uint32_t kept = 0;
    int64_t now = now_ns();
    f->retry_round++;
    for (uint32_t i = 0; i < f->n_queued; i++) {
        slot *s = &f->tx[f->tx_queue[i]];
        peer *p = &f->peers[s->peer];
        int rc = p->removed ? -FI_ECANCELED : p->blocked_round == f->retry_round ? -FI_EAGAIN : post_tx(f, s);
        if (rc == 0) {
            s->state = 1;
            p->st.tx_queued--;
            continue;
        }
        int expired = rc != -FI_EAGAIN || now - s->first_ns > (int64_t)MSM_FAB_RETRY_MS * 1000000;
        if (expired && events != NULL && n < max) {
            events[n++] = (msm_fab_event){.kind = MSM_FAB_EV_SEND_ERROR, .peer = s->peer, .token = s->token,
                                          .error = rc < 0 ? -rc : rc};
            p->st.tx_queued--;
            if (rc == -FI_EAGAIN)
                p->st.drop_busy++;
            else
                p->st.drop_send_error++;
            tx_drop(f, s);
            continue;
        }
        p->blocked_round = f->retry_round;
        f->tx_queue[kept++] = f->tx_queue[i];
    }
    f->n_queued = kept;
    return n;
}

int msm_fab_send(msm_fab *f, int pid, uint32_t group, uint64_t seq, uint64_t ts, const uint8_t *meta,
                 uint32_t meta_len, const uint8_t *payload, uint64_t plen, uint64_t token) {
    if (pid < 0 || pid >= f->n_peers || meta_len > f->max_meta || plen > f->max_frame)
        return -FI_EINVAL;
    peer *p = &f->peers[pid];
    if (p->removed)
        return -FI_EINVAL;
    if ((int64_t)(p->st.granted - p->st.sent) <= 0 || f->n_tx_free == 0) {
        p->st.drop_no_credit++;
        return MSM_FAB_NO_CREDIT;
    }
    if (f->n_queued > 0)
        retry_queued(f, NULL, 0);
    slot *s = &f->tx[f->tx_free[f->n_tx_free - 1]];
    uint8_t *hdr = f->tx_mem + (size_t)s->index * f->tx_stride;
    put_le(hdr, FRAME_MAGIC, group, meta_len, seq, ts, plen);
    s->head = PAD(MSM_FAB_HEADER_BYTES + meta_len);
    memset(hdr + MSM_FAB_HEADER_BYTES, 0, s->head - MSM_FAB_HEADER_BYTES);
    if (meta_len > 0)
        memcpy(hdr + MSM_FAB_HEADER_BYTES, meta, meta_len);
    s->mr = NULL;
    if (plen > 0 && reg(f, (void *)payload, plen, FI_SEND, &s->mr) != 0) {
        p->st.drop_send_error++;
        return -FI_ENOMEM;
    }
    s->payload = payload;
    s->plen = plen;
    s->peer = pid;
    /* Behind a queued send to the same peer: no attempt (order per peer). */
    int rc = p->st.tx_queued > 0 ? -FI_EAGAIN : post_tx(f, s);
    if (rc != 0 && rc != -FI_EAGAIN) {
        if (s->mr != NULL)
            fi_close(&s->mr->fid);
        s->mr = NULL;
        s->peer = -1;
        return p->st.drop_send_error++, rc;
    }
    f->n_tx_free--;
    s->state = rc == 0 ? 1 : 2;
    s->token = token;
    p->st.sent++;
    p->st.tx_pending++;
    p->st.tx_frames++;
    p->st.tx_bytes += plen;
    if (rc == 0)
        return MSM_FAB_SENT;
    s->first_ns = now_ns();
    p->st.tx_retried++;
    p->st.tx_queued++;
    f->tx_queue[f->n_queued++] = s->index;
    return MSM_FAB_QUEUED;
}

/* The peer's frames will come from another endpoint of its own (named by its own, checked, endpoint). */
static void on_alias(msm_fab *f, peer *p, const ctrl_msg *m, size_t len) {
    uint32_t namelen = le32toh(m->namelen);
    if (namelen == 0 || namelen > ALIAS_NAME_MAX || len < CTRL_HEAD + sizeof(uint32_t) + namelen) {
        f->st.ctrl_bad++;
        return;
    }
    if (p->alias != FI_ADDR_NOTAVAIL)
        return; /* one per peer: the first stands (the AV holds two entries per peer at most) */
    fi_addr_t alias = FI_ADDR_NOTAVAIL;
    if (fi_av_insert(f->av, m->name, 1, &alias, 0, NULL) == 1)
        p->alias = alias;
    else
        f->st.ctrl_bad++;
}

/* First word from a peer, or a peer restarted at the same address: its counters start afresh. */
static void new_epoch(msm_fab *f, peer *p, uint64_t epoch) {
    if (p->epoch != 0) {
        /* What it may have in flight to us: our credits less what we still hold of its old frames. */
        p->st.my_grant = p->st.rx_held < f->credits ? f->credits - p->st.rx_held : 0;
        p->st.granted = p->st.sent = 0;
        if (p->alias != FI_ADDR_NOTAVAIL)
            fi_av_remove(f->av, &p->alias, 1, 0);
        p->alias = FI_ADDR_NOTAVAIL;
    }
    p->epoch = epoch;
    p->grant_pending = 1;
    p->alias_pending = p->tx_ep != NULL;
}

static void on_ctrl(msm_fab *f, slot *s, fi_addr_t src, size_t len) {
    ctrl_msg m = f->ctrl_mem[s->index];
    post_ctrl(f, s->index);
    int pid = find_peer(f, src);
    if (pid < 0 || f->peers[pid].removed) {
        f->st.ctrl_unknown_peer++;
        return;
    }
    if (len < CTRL_HEAD || le32toh(m.magic) != CTRL_MAGIC) {
        f->st.ctrl_bad++;
        return;
    }
    peer *p = &f->peers[pid];
    uint64_t epoch = le64toh(m.epoch);
    if (epoch != p->epoch)
        new_epoch(f, p, epoch);
    if (le32toh(m.kind) == CTRL_ALIAS) {
        on_alias(f, p, &m, len);
        return;
    }
    uint64_t granted = le64toh(m.granted);
    if (le64toh(m.your_epoch) == f->epoch && granted > p->st.granted)
        p->st.granted = granted; /* a grant for this incarnation of ours */
    if (le32toh(m.kind) == CTRL_HELLO) {
        p->grant_pending = 1;
        p->alias_pending = p->tx_ep != NULL; /* it may have missed it (it did not know us yet) */
    }
}

/* A frame buffer's completion: a FRAME event (1), or 0 when it was dropped and reposted. */
static int on_frame(msm_fab *f, slot *s, fi_addr_t src, size_t len, msm_fab_event *ev) {
    int pid = find_peer(f, src);
    if (pid < 0 || f->peers[pid].removed) {
        f->st.rx_unknown_peer++;
        if (pid >= 0)
            f->peers[pid].st.my_grant++; /* its credit, should it be added again */
        recycle_rx(f, s->index);
        return 0;
    }
    peer *p = &f->peers[pid];
    const uint8_t *b = f->rx_mem + (size_t)s->index * f->rx_stride;
    uint32_t w32[4];
    uint64_t w64[3];
    memcpy(w32, b, sizeof(w32));
    memcpy(w64, b + sizeof(w32), sizeof(w64));
    uint32_t meta_len = le32toh(w32[3]);
    uint64_t plen = le64toh(w64[2]);
    if (len < MSM_FAB_HEADER_BYTES || le32toh(w32[0]) != FRAME_MAGIC || le32toh(w32[1]) != FRAME_VERSION ||
        meta_len > f->max_meta || plen > f->max_frame || PAD(MSM_FAB_HEADER_BYTES + meta_len) + plen != len) {
        p->st.rx_bad++;
        p->st.my_grant++; /* it used a credit: give it back */
        p->grant_pending = 1;
        recycle_rx(f, s->index);
        return 0;
    }
    s->state = 1;
    s->peer = pid;
    p->st.rx_held++;
    p->st.rx_frames++;
    p->st.rx_bytes += plen;
    *ev = (msm_fab_event){.kind = MSM_FAB_EV_FRAME, .peer = pid, .slot = s->index, .group = le32toh(w32[2]),
                          .meta_len = meta_len, .seq = le64toh(w64[0]), .timestamp = le64toh(w64[1]),
                          .payload_len = plen, .payload_offset = PAD(MSM_FAB_HEADER_BYTES + meta_len)};
    return 1;
}

static int on_completion(msm_fab *f, struct fi_cq_tagged_entry *ce, fi_addr_t src, msm_fab_event *ev) {
    slot *s = (slot *)ce->op_context;
    if (s == NULL)
        return 0;
    switch (s->kind) {
    case SLOT_RX:
        f->n_posted--;
        return on_frame(f, s, src, ce->len, ev);
    case SLOT_CTRL:
        on_ctrl(f, s, src, ce->len);
        return 0;
    case SLOT_TX:
        *ev = (msm_fab_event){.kind = MSM_FAB_EV_SENT, .peer = s->peer, .token = s->token};
        tx_done(f, s);
        return 1;
    }
    return 0;
}

static int on_error(msm_fab *f, msm_fab_event *ev) {
    struct fi_cq_err_entry e = {0};
    if (fi_cq_readerr(f->cq, &e, 0) != 1)
        return 0;
    f->st.cq_errors++;
    slot *s = (slot *)e.op_context;
    if (s == NULL)
        return 0;
    if (s->kind == SLOT_TX) {
        int pid = s->peer;
        *ev = (msm_fab_event){.kind = MSM_FAB_EV_SEND_ERROR, .peer = pid, .token = s->token, .error = e.err};
        if (pid >= 0) {
            f->peers[pid].st.drop_send_error++;
            if (f->peers[pid].st.sent > 0)
                f->peers[pid].st.sent--; /* it never arrived: its credit is ours again */
        }
        tx_done(f, s);
        return 1;
    }
    if (s->kind == SLOT_RX)
        f->n_posted--;
    if (e.err == FI_ECANCELED)
        return 0;
    if (s->kind == SLOT_RX)
        recycle_rx(f, s->index); /* truncated or failed: the buffer goes back */
    else
        post_ctrl(f, s->index);
    return 0;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Without a wait fd (shm), sleep in steps growing from 10 us to 500 us while
 * nothing happens: a frame that arrives on an idle link waits at most 0.5 ms,
 * and an idle endpoint costs a few thousand wakeups a second, not 50,000. */
#define NAP_MIN_NS 10000
#define NAP_MAX_NS 500000

static void wait_a_little(msm_fab *f, int64_t left_ns, int64_t *nap_ns) {
    if (f->wait_fd >= 0) {
        struct fid *fids[1] = {&f->cq->fid};
        if (fi_trywait(f->fabric, fids, 1) == FI_SUCCESS) {
            struct pollfd pfd = {.fd = f->wait_fd, .events = POLLIN};
            /* At most 1 ms per wait: progress (grants to flush) never hangs on a missed wakeup. */
            poll(&pfd, 1, left_ns > 1000000 ? 1 : 0);
        }
        return;
    }
    struct timespec ts = {0, left_ns > *nap_ns ? *nap_ns : left_ns};
    nanosleep(&ts, NULL);
    *nap_ns = *nap_ns * 2 > NAP_MAX_NS ? NAP_MAX_NS : *nap_ns * 2;
}

int msm_fab_poll(msm_fab *f, msm_fab_event *events, int max, int timeout_ms) {
    int n = 0;
    int64_t deadline = now_ns() + (int64_t)timeout_ms * 1000000, nap_ns = NAP_MIN_NS;
    struct fi_cq_tagged_entry ce[CQ_BATCH];
    fi_addr_t src[CQ_BATCH];
    /* Once per call, not after each completion: a frame the caller releases before its next poll is
     * reposted first (the same, warm buffer); one it holds makes this post the next from the stack. */
    top_up_rx(f);
    while (n < max) {
        flush_ctrl(f);
        if (f->n_queued > 0)
            n += retry_queued(f, &events[n], max - n);
        int want = max - n < CQ_BATCH ? max - n : CQ_BATCH;
        ssize_t r = fi_cq_readfrom(f->cq, ce, (size_t)want, src);
        if (r > 0) {
            for (ssize_t i = 0; i < r; i++)
                n += on_completion(f, &ce[i], src[i], &events[n]);
            continue;
        }
        if (r == -FI_EAVAIL) {
            n += on_error(f, &events[n]);
            continue;
        }
        int64_t left = deadline - now_ns();
        if (n > 0 || left <= 0)
            break;
        wait_a_little(f, left, &nap_ns);
    }
    flush_ctrl(f);
    return n;
}

uint8_t *msm_fab_buffer(msm_fab *f, uint32_t i) { return i < f->n_rx ? f->rx_mem + (size_t)i * f->rx_stride : NULL; }

int msm_fab_release(msm_fab *f, uint32_t i) {
    if (i >= f->n_rx || f->rx[i].state != 1)
        return -FI_EINVAL;
    int pid = f->rx[i].peer;
    int rc = recycle_rx(f, i);
    if (pid >= 0) {
        peer *p = &f->peers[pid];
        p->st.rx_held--;
        p->st.my_grant++;
        p->grant_pending = 1;
    }
    flush_ctrl(f);
    return rc;
}

int msm_fab_peer_stats_get(msm_fab *f, int pid, msm_fab_peer_stats *out) {
    if (pid < 0 || pid >= f->n_peers)
        return -FI_EINVAL;
    *out = f->peers[pid].st;
    out->credits = (int64_t)(out->granted - out->sent);
    return 0;
}

void msm_fab_stats_get(msm_fab *f, msm_fab_stats *out) {
    *out = f->st;
    out->rx_buffers = f->n_rx;
    out->rx_buffer_bytes = f->rx_stride;
    out->mr_local = f->mr_local;
    uint32_t posted = 0;
    for (uint32_t i = 0; i < f->n_rx; i++)
        posted += f->rx[i].state == 0;
    out->rx_posted = posted;
}

int msm_fab_fd(msm_fab *f) { return f->wait_fd; }

static void close_fid(struct fid *fid) {
    if (fid != NULL)
        fi_close(fid);
}

void msm_fab_close(msm_fab *f) {
    if (f == NULL)
        return;
    close_fid(f->ep ? &f->ep->fid : NULL);
    for (int i = 0; f->peers != NULL && i < f->n_peers; i++)
        close_fid(f->peers[i].tx_ep ? &f->peers[i].tx_ep->fid : NULL);
    for (uint32_t i = 0; f->tx != NULL && i < f->n_tx; i++)
        close_fid(f->tx[i].mr ? &f->tx[i].mr->fid : NULL);
    close_fid(f->cq ? &f->cq->fid : NULL);
    close_fid(f->av ? &f->av->fid : NULL);
    close_fid(f->rx_mr ? &f->rx_mr->fid : NULL);
    close_fid(f->tx_mr ? &f->tx_mr->fid : NULL);
    close_fid(f->ctrl_mr ? &f->ctrl_mr->fid : NULL);
    close_fid(f->domain ? &f->domain->fid : NULL);
    close_fid(f->fabric ? &f->fabric->fid : NULL);
    if (f->info)
        fi_freeinfo(f->info);
    if (f->rx_mem)
        munmap(f->rx_mem, f->rx_bytes);
    if (f->tx_mem)
        munmap(f->tx_mem, f->tx_bytes);
    free(f->ctrl_mem);
    free(f->rx);
    free(f->rx_free);
    free(f->tx);
    free(f->ctrl);
    free(f->tx_free);
    free(f->tx_queue);
    free(f->peers);
    free(f);
}
