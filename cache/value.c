/* Cache keys and value headers: encoding, per-block checksums, and the
 * checks every read makes before serving a byte. See cache_int.h for the
 * value layout. */
#include <string.h>
#include <xxhash.h>

#include "cache/cache_int.h"

void fz_cache_key_for(fz_cache_key *k, const void *text, uint64_t len, uint64_t chunk)
{
    XXH128_hash_t h = XXH3_128bits(text, (size_t)len);
    k->hi = h.high64;
    k->lo = h.low64;
    k->chunk = chunk;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

void fz_cache_key_encode(const fz_cache_key *k, uint8_t out[FZ_CACHE_KEYLEN])
{
    put_be64(out, k->hi);
    put_be64(out + 8, k->lo);
    put_be64(out + 16, k->chunk);
}

void fz_cache_key_decode(const uint8_t in[FZ_CACHE_KEYLEN], fz_cache_key *k)
{
    k->hi = get_be64(in);
    k->lo = get_be64(in + 8);
    k->chunk = get_be64(in + 16);
}

static unsigned block_shift(uint64_t len)
{
    unsigned shift = FZ_CACHE_BLOCK_SHIFT;
    while ((len >> shift) >= FZ_CACHE_MAX_BLOCKS)
        shift++;
    return shift;
}

static uint64_t nblocks(uint64_t len, unsigned shift)
{
    return len ? ((len - 1) >> shift) + 1 : 0;
}

uint64_t fz_cache_header_len(uint64_t len)
{
    return FZ_CACHE_HDR_FIXED + 8 * nblocks(len, block_shift(len));
}

void fz_cache_header(uint8_t *hdr, const fz_cache_key *key, const uint8_t *bytes, uint64_t len)
{
    unsigned shift = block_shift(len);
    uint64_t nb = nblocks(len, shift), bs = 1ull << shift;
    uint8_t *table = hdr + FZ_CACHE_HDR_FIXED;
    for (uint64_t b = 0; b < nb; b++) {
        uint64_t o = b << shift, n = len - o < bs ? len - o : bs;
        put_le64(table + 8 * b, XXH3_64bits(bytes + o, (size_t)n));
    }
    uint32_t magic = FZ_CACHE_MAGIC;
    for (int i = 0; i < 4; i++)
        hdr[i] = (uint8_t)(magic >> (8 * i));
    hdr[4] = FZ_CACHE_VALUE_VERSION & 0xff;
    hdr[5] = FZ_CACHE_VALUE_VERSION >> 8;
    hdr[6] = (uint8_t)shift;
    hdr[7] = 0;
    put_le64(hdr + 8, len);
    put_le64(hdr + 16, XXH3_64bits(table, (size_t)(8 * nb)));
    put_le64(hdr + 24, key->hi);
    put_le64(hdr + 32, key->lo);
    put_le64(hdr + 40, key->chunk);
}

bool fz_cache_value_parse(const uint8_t *val, uint64_t vlen, const fz_cache_key *key, uint64_t *len,
                          const uint8_t **payload)
{
    if (vlen < FZ_CACHE_HDR_FIXED)
        return false;
    uint32_t magic =
        (uint32_t)val[0] | (uint32_t)val[1] << 8 | (uint32_t)val[2] << 16 | (uint32_t)val[3] << 24;
    unsigned version = val[4] | (unsigned)val[5] << 8;
    unsigned shift = val[6];
    uint64_t n = fz_cache_get_le64(val + 8);
    fz_cache_key echo = {fz_cache_get_le64(val + 24), fz_cache_get_le64(val + 32),
                         fz_cache_get_le64(val + 40)};
    if (magic != FZ_CACHE_MAGIC || version != FZ_CACHE_VALUE_VERSION || val[7] != 0 || n > vlen ||
        shift != block_shift(n) || !fz_cache_key_eq(&echo, key))
        return false;
    uint64_t hl = fz_cache_header_len(n);
    if (hl > vlen || vlen - hl != n)
        return false;
    uint64_t nb = nblocks(n, shift);
    if (XXH3_64bits(val + FZ_CACHE_HDR_FIXED, (size_t)(8 * nb)) != fz_cache_get_le64(val + 16))
        return false;
    *len = n;
    *payload = val + hl;
    return true;
}

bool fz_cache_value_check(const uint8_t *val, uint64_t off, uint64_t n)
{
    uint64_t len = fz_cache_get_le64(val + 8);
    unsigned shift = val[6];
    uint64_t bs = 1ull << shift;
    const uint8_t *table = val + FZ_CACHE_HDR_FIXED, *payload = val + fz_cache_header_len(len);
    if (n == 0)
        return true;
    for (uint64_t b = off >> shift; b <= (off + n - 1) >> shift; b++) {
        uint64_t o = b << shift, k = len - o < bs ? len - o : bs;
        if (XXH3_64bits(payload + o, (size_t)k) != fz_cache_get_le64(table + 8 * b))
            return false;
    }
    return true;
}
