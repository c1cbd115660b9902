/* Loss repair codecs for the node-to-node leg: SMPTE 2022-1 row/column XOR FEC and
 * SMPTE 2022-7 de-duplication. Plain C, no I/O: the engines hand packets in and out.
 *
 * Bounded state: an encoder holds L+1 XOR sums of at most max_packet bytes; a decoder
 * holds three rings (media, row FEC, column FEC) of W slots of max_packet(+16) bytes,
 * W the power of two at or above 3*L*D (three matrices: the one being received, the one
 * whose column FEC is still arriving, and room for reordering); a de-duplicator holds
 * one 64-bit sequence number per slot of its window.
 */
#ifndef MSM_FEC_H
#define MSM_FEC_H

#include <stddef.h>
#include <stdint.h>

#define MSM_FEC_MAX_COLUMNS 20
#define MSM_FEC_MAX_ROWS 20
#define MSM_FEC_MAX_PACKET 9000
#define MSM_FEC_HEADER 16

typedef struct msm_fec_enc msm_fec_enc;
typedef struct msm_fec_dec msm_fec_dec;
typedef struct msm_dedup msm_dedup;

typedef struct {
    uint64_t media;
    uint64_t fec_packets;
    uint64_t restarts;
    uint64_t bad_media;
} msm_fec_enc_stats;

typedef struct {
    uint64_t media;
    uint64_t fec;
    uint64_t recovered;
    uint64_t unrecoverable;
    uint64_t duplicates;
    uint64_t late;
    uint64_t bad_media;
    uint64_t bad_fec;
    uint64_t fec_late;
    uint64_t fec_duplicates;
} msm_fec_dec_stats;

typedef struct {
    uint64_t first;
    uint64_t duplicates;
    uint64_t late;
} msm_dedup_stats;

msm_fec_enc *msm_fec_enc_new(uint32_t columns, uint32_t rows, uint32_t max_packet, int payload_type, uint32_t ssrc);
void msm_fec_enc_free(msm_fec_enc *enc);
int msm_fec_enc_push(msm_fec_enc *enc, const uint8_t *pkt, size_t len, uint8_t *out, size_t slot, uint32_t *lens,
                     uint8_t *kinds);
void msm_fec_enc_stats_get(const msm_fec_enc *enc, msm_fec_enc_stats *out);
long msm_fec_enc_push_batch(msm_fec_enc *enc, const uint8_t *pkts, size_t stride, const uint32_t *lens, size_t count,
                            uint8_t *out, size_t slot, uint32_t *out_lens, uint8_t *kinds, size_t out_max);

msm_fec_dec *msm_fec_dec_new(uint32_t columns, uint32_t rows, uint32_t max_packet);
void msm_fec_dec_free(msm_fec_dec *dec);
uint32_t msm_fec_dec_window(const msm_fec_dec *dec);
int msm_fec_dec_media(msm_fec_dec *dec, const uint8_t *pkt, size_t len);
int msm_fec_dec_fec(msm_fec_dec *dec, const uint8_t *pkt, size_t len);
long msm_fec_dec_pop(msm_fec_dec *dec, uint8_t *out, size_t cap);
void msm_fec_dec_stats_get(const msm_fec_dec *dec, msm_fec_dec_stats *out);
void msm_fec_dec_push_batch(msm_fec_dec *dec, const uint8_t *pkts, size_t stride, const uint32_t *lens,
                            const uint8_t *is_fec, size_t count, int *codes);

msm_dedup *msm_dedup_new(uint32_t window);
void msm_dedup_free(msm_dedup *d);
int msm_dedup_push(msm_dedup *d, uint32_t seq);
void msm_dedup_stats_get(const msm_dedup *d, msm_dedup_stats *out);

#endif
