/* memif descriptor-ring fast path (protocol 2.0 layout), for msm.sdk.memif_ring.
 *
 * A ring is a 128-byte header (u32 cookie, u16 flags, u16 head at 6; u16 tail
 * at 64) then 2**log2 descriptors of 16 bytes (u16 flags, u16 region, u32
 * length, u32 offset, u32 metadata). Counters are free-running u16. These
 * functions only move and check descriptors: no payload byte is read or written.
 */
#include <stdint.h>

/* Scans up to max_frames frames from counter next up to produced. For each frame
 * whose descriptors all lie inside their regions, writes 5 u32 to out: its first
 * slot (relative to next), region and offset of its first buffer, total length,
 * number of slots. A frame with a
 * descriptor outside the regions is skipped and counted in *bad; an unfinished
 * chain stops the scan. Returns frames written; *consumed = slots scanned. */
int msm_memif_rx_burst(uint8_t *ring, unsigned log2, unsigned next, unsigned produced,
                       const uint64_t *region_sizes, unsigned nregions, uint32_t *out,
                       unsigned max_frames, unsigned *consumed, unsigned *bad);

/* Forwards single-buffer frames by reference from a receive ring (read from
 * rx_next up to rx_produced; the caller releases them later) to a client's
 * transmit ring (written at its head while the server's tail leaves room), adding
 * region_delta to each region index. Chained or bad frames stop the batch
 * (*bad counts bad ones, which are skipped). Returns frames forwarded;
 * *consumed = receive slots used, *bytes = payload bytes referenced. */
int msm_memif_forward(uint8_t *rx_ring, unsigned rx_log2, unsigned rx_next, unsigned rx_produced,
                      const uint64_t *region_sizes, unsigned nregions, uint8_t *tx_ring,
                      unsigned tx_log2, unsigned region_delta, unsigned max_frames,
                      unsigned *consumed, unsigned *bad, uint64_t *bytes);
