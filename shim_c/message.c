/* AARP messages (spec/aarp.md): encoding of queries and answers, strict decoding. Pure code;
 * the rules and their order follow aarp/message.py exactly (tests/vectors/aarp/messages.json). */
#include <string.h>
#include <sys/socket.h>

#include "internal.h"

enum { T_PAD = 0, T_UNICAST6 = 1, T_UNICAST4 = 2, T_TTL = 3, T_ANYCAST = 4, T_KEY_ID = 5,
       T_TAG = 6, T_KNOWN = 7 };

static const char MAGIC[4] = {'A', 'A', 'R', 'P'};

const char *msg_code_name(int code)
{
    static const char *const NAMES[] = {
        "ok", "short", "oversized", "magic", "version", "kind", "tlv-truncated", "after-tag",
        "pad-nonzero", "query-field", "tlv-length", "duplicate", "missing-unicast",
        "missing-ttl", "missing-anycast", "tag-without-key-id", "key-id-without-tag",
    };
    int i = -code;
    return i >= 0 && i < (int)(sizeof NAMES / sizeof NAMES[0]) ? NAMES[i] : "unknown";
}

static int length_ok(int type, unsigned len)
{
    switch (type) {
    case T_UNICAST6: return len == 16;
    case T_UNICAST4: return len == 4;
    case T_TTL: return len == 4;
    case T_ANYCAST: return len == 4 || len == 16;
    case T_KEY_ID: return len == 1;
    case T_TAG: return len == MSG_TAG_LEN;
    }
    return 1;
}

int msg_decode(const uint8_t *buf, size_t len, struct msg *m)
{
    memset(m, 0, sizeof *m);
    if (len < MSG_HEADER_LEN)
        return MSG_E_SHORT;
    if (len > MSG_MAX_LEN)
        return MSG_E_OVERSIZED;
    if (memcmp(buf, MAGIC, 4) != 0)
        return MSG_E_MAGIC;
    if (buf[4] != 1)
        return MSG_E_VERSION;
    if (buf[5] != MSG_KIND_QUERY && buf[5] != MSG_KIND_ANSWER)
        return MSG_E_KIND;
    m->kind = buf[5];
    m->flags = buf[6] << 8 | buf[7];
    memcpy(m->nonce, buf + 8, MSG_NONCE_LEN);

    /* Framing of the whole message first, so a cut message is always "tlv-truncated". */
    for (size_t pos = MSG_HEADER_LEN; pos < len; pos += 2 + (size_t)buf[pos + 1])
        if (len - pos < 2 || pos + 2 + buf[pos + 1] > len)
            return MSG_E_TRUNCATED;

    int seen[T_KNOWN] = {0};
    int tag_seen = 0;
    for (size_t pos = MSG_HEADER_LEN; pos < len; pos += 2 + (size_t)buf[pos + 1]) {
        int type = buf[pos];
        unsigned vlen = buf[pos + 1];
        const uint8_t *v = buf + pos + 2;
        if (tag_seen)
            return MSG_E_AFTER_TAG;
        if (type == T_PAD) {
            for (unsigned i = 0; i < vlen; i++)
                if (v[i])
                    return MSG_E_PAD;
            continue;
        }
        if (type >= T_KNOWN)
            continue; /* unknown types are skipped */
        if (m->kind == MSG_KIND_QUERY)
            return MSG_E_QUERY_FIELD;
        if (!length_ok(type, vlen))
            return MSG_E_LENGTH;
        if (seen[type])
            return MSG_E_DUPLICATE;
        seen[type] = 1;
        switch (type) {
        case T_UNICAST6:
            memcpy(m->unicast6, v, 16);
            m->has_unicast6 = 1;
            break;
        case T_UNICAST4:
            memcpy(m->unicast4, v, 4);
            m->has_unicast4 = 1;
            break;
        case T_TTL:
            m->ttl = (uint32_t)v[0] << 24 | (uint32_t)v[1] << 16 | (uint32_t)v[2] << 8 | v[3];
            break;
        case T_ANYCAST:
            m->anycast.af = vlen == 4 ? AF_INET : AF_INET6;
            memcpy(m->anycast.b, v, vlen);
            break;
        case T_KEY_ID:
            m->key_id = v[0];
            m->has_key_id = 1;
            break;
        case T_TAG:
            memcpy(m->tag, v, MSG_TAG_LEN);
            m->has_tag = 1;
            m->signed_len = pos;
            tag_seen = 1;
            break;
        }
    }
    if (m->kind == MSG_KIND_QUERY)
        return MSG_OK;
    if (!seen[T_UNICAST6] && !seen[T_UNICAST4])
        return MSG_E_NO_UNICAST;
    if (!seen[T_TTL])
        return MSG_E_NO_TTL;
    if (!seen[T_ANYCAST])
        return MSG_E_NO_ANYCAST;
    if (seen[T_TAG] && !seen[T_KEY_ID])
        return MSG_E_TAG_NO_KEY_ID;
    if (seen[T_KEY_ID] && !seen[T_TAG])
        return MSG_E_KEY_ID_NO_TAG;
    return MSG_OK;
}

static size_t header(uint8_t *out, int kind, const uint8_t nonce[MSG_NONCE_LEN])
{
    memcpy(out, MAGIC, 4);
    out[4] = 1;
    out[5] = (uint8_t)kind;
    out[6] = out[7] = 0;
    memcpy(out + 8, nonce, MSG_NONCE_LEN);
    return MSG_HEADER_LEN;
}

size_t msg_encode_query(const uint8_t nonce[MSG_NONCE_LEN], size_t size, uint8_t *out)
{
    if (size < MSG_HEADER_LEN || size > MSG_MAX_LEN || size == MSG_HEADER_LEN + 1)
        return 0;
    size_t at = header(out, MSG_KIND_QUERY, nonce);
    size_t left = size - at;
    /* Pad TLVs of at most 257 bytes, never leaving a single byte that no TLV could fill. */
    while (left) {
        size_t chunk = left < 257 ? left : 257;
        if (left - chunk == 1)
            chunk--;
        out[at] = T_PAD;
        out[at + 1] = (uint8_t)(chunk - 2);
        memset(out + at + 2, 0, chunk - 2);
        at += chunk;
        left -= chunk;
    }
    return at;
}

static size_t tlv(uint8_t *out, size_t at, int type, const void *value, size_t len)
{
    out[at] = (uint8_t)type;
    out[at + 1] = (uint8_t)len;
    memcpy(out + at + 2, value, len);
    return at + 2 + len;
}

size_t msg_encode_answer(const uint8_t nonce[MSG_NONCE_LEN], const struct ipaddr *anycast,
                         const uint8_t *ua6, const uint8_t *ua4, uint32_t ttl,
                         const uint8_t *key, size_t key_len, int key_id, uint8_t *out)
{
    if ((!ua6 && !ua4) || key_id < 0 || key_id > 255)
        return 0;
    size_t at = header(out, MSG_KIND_ANSWER, nonce);
    if (ua6)
        at = tlv(out, at, T_UNICAST6, ua6, 16);
    if (ua4)
        at = tlv(out, at, T_UNICAST4, ua4, 4);
    uint8_t t[4] = {(uint8_t)(ttl >> 24), (uint8_t)(ttl >> 16), (uint8_t)(ttl >> 8), (uint8_t)ttl};
    at = tlv(out, at, T_TTL, t, 4);
    at = tlv(out, at, T_ANYCAST, anycast->b, (size_t)ip_len(anycast));
    if (key) {
        uint8_t id = (uint8_t)key_id, mac[32];
        at = tlv(out, at, T_KEY_ID, &id, 1);
        hmac_sha256(key, key_len, out, at, mac);
        at = tlv(out, at, T_TAG, mac, MSG_TAG_LEN);
    }
    return at;
}

int msg_tag_valid(const uint8_t *buf, const struct msg *m, const uint8_t *key, size_t key_len)
{
    if (!m->has_tag || !key || !key_len)
        return 0;
    uint8_t mac[32];
    hmac_sha256(key, key_len, buf, m->signed_len, mac);
    return const_time_equal(mac, m->tag, MSG_TAG_LEN);
}
