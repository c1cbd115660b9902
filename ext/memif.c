/* memif descriptor-ring fast path: see memif.h. */
#include "memif.h"

#include <string.h>

#define HEAD_OFF 6
#define TAIL_OFF 64
#define DESC_OFF 128
#define FLAG_NEXT 1

struct desc {
    uint16_t flags;
    uint16_t region;
    uint32_t length;
    uint32_t offset;
    uint32_t metadata;
};

static inline struct desc *slot(uint8_t *ring, unsigned mask, unsigned counter)
{
    return (struct desc *)(ring + DESC_OFF) + (counter & mask);
}

static inline int inside(const struct desc *d, const uint64_t *sizes, unsigned n)
{
    return d->region < n && (uint64_t)d->offset + d->length <= sizes[d->region];
}

/* One frame starting at counter c with avail slots published: 1 good, 0 bad, -1 unfinished. */
static int frame_at(uint8_t *ring, unsigned mask, unsigned c, unsigned avail, const uint64_t *sizes,
                    unsigned n, uint32_t *slots, uint64_t *total)
{
    int good = 1;
    uint64_t sum = 0;
    for (unsigned i = 0; i < avail; i++) {
        struct desc d;
        memcpy(&d, slot(ring, mask, c + i), sizeof d); /* one read: the peer may be writing */
        if (!inside(&d, sizes, n))
            good = 0;
        sum += d.length;
        if (!(d.flags & FLAG_NEXT)) {
            *slots = i + 1;
            *total = sum;
            return good;
        }
    }
    if (avail > mask) { /* a chain as long as the ring never ends: drop it all */
        *slots = avail;
        *total = 0;
        return 0;
    }
    return -1;
}

int msm_memif_rx_burst(uint8_t *ring, unsigned log2, unsigned next, unsigned produced,
                       const uint64_t *region_sizes, unsigned nregions, uint32_t *out,
                       unsigned max_frames, unsigned *consumed, unsigned *bad)
{
    unsigned mask = (1u << log2) - 1, avail = (produced - next) & 0xFFFF, used = 0;
    int frames = 0;
    __atomic_thread_fence(__ATOMIC_ACQUIRE); /* descriptors after the producer's counter */
    *bad = 0;
    if (avail > mask + 1)
        avail = 0;
    while (used < avail && (unsigned)frames < max_frames) {
        uint32_t slots;
        uint64_t total;
        int r = frame_at(ring, mask, next + used, avail - used, region_sizes, nregions, &slots, &total);
        if (r < 0)
            break;
        if (r == 1) {
            struct desc *d = slot(ring, mask, next + used);
            uint32_t *o = out + 5 * frames++;
            o[0] = used;
            o[1] = d->region;
            o[2] = d->offset;
            o[3] = (uint32_t)total;
            o[4] = slots;
        } else {
            (*bad)++;
        }
        used += slots;
    }
    *consumed = used;
    return frames;
}

int msm_memif_forward(uint8_t *rx_ring, unsigned rx_log2, unsigned rx_next, unsigned rx_produced,
                      const uint64_t *region_sizes, unsigned nregions, uint8_t *tx_ring,
                      unsigned tx_log2, unsigned region_delta, unsigned max_frames,
                      unsigned *consumed, unsigned *bad, uint64_t *bytes)
{
    unsigned rx_mask = (1u << rx_log2) - 1, tx_mask = (1u << tx_log2) - 1;
    unsigned avail = (rx_produced - rx_next) & 0xFFFF, used = 0;
    uint16_t *head_p = (uint16_t *)(tx_ring + HEAD_OFF), *tail_p = (uint16_t *)(tx_ring + TAIL_OFF);
    unsigned head = __atomic_load_n(head_p, __ATOMIC_RELAXED);
    unsigned tail = __atomic_load_n(tail_p, __ATOMIC_ACQUIRE);
    unsigned room = (tx_mask + 1) - ((head - tail) & 0xFFFF);
    int frames = 0;
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    *bad = 0;
    *bytes = 0;
    if (avail > rx_mask + 1 || room > tx_mask + 1)
        avail = 0;
    while (used < avail && (unsigned)frames < max_frames && room > 0) {
        struct desc d;
        memcpy(&d, slot(rx_ring, rx_mask, rx_next + used), sizeof d);
        if (d.flags & FLAG_NEXT)
            break; /* chained: the caller's slow path */
        used++;
        if (!inside(&d, region_sizes, nregions)) {
            (*bad)++;
            continue;
        }
        struct desc *t = slot(tx_ring, tx_mask, head);
        t->flags = 0;
        t->region = (uint16_t)(d.region + region_delta);
        t->length = d.length;
        t->offset = d.offset;
        head++;
        room--;
        frames++;
        *bytes += d.length;
    }
    __atomic_store_n(head_p, (uint16_t)head, __ATOMIC_RELEASE);
    *consumed = used;
    return frames;
}
