/* libaarp's AARP message codec (shim_c/message.c): strict decoding of any datagram; whatever
 * decodes re-encodes into a message that decodes to the same fields; tags verify only with
 * the key that made them. */
#include <sys/socket.h>

#include "../../shim_c/internal.h"
#include "common.h"

static const uint8_t KEY[32] = "fuzzing key, 32 bytes long .....";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *buf = exact_copy(data, size);
    struct msg m;
    int rc = msg_decode(buf, size, &m);
    CHECK(rc <= 0 && rc >= MSG_E_KEY_ID_NO_TAG);
    CHECK(strcmp(msg_code_name(rc), "unknown") != 0);
    if (rc == MSG_OK) {
        CHECK(m.kind == MSG_KIND_QUERY || m.kind == MSG_KIND_ANSWER);
        uint8_t out[MSG_MAX_LEN];
        struct msg again;
        if (m.kind == MSG_KIND_QUERY) {
            size_t n = msg_encode_query(m.nonce, size, out);
            CHECK(n == size || size == MSG_HEADER_LEN + 1);
            if (n) {
                CHECK(msg_decode(out, n, &again) == MSG_OK);
                CHECK(again.kind == MSG_KIND_QUERY && !memcmp(again.nonce, m.nonce, 16));
            }
        } else {
            CHECK(m.anycast.af == AF_INET || m.anycast.af == AF_INET6);
            CHECK(m.signed_len <= size);
            (void)msg_tag_valid(buf, &m, KEY, sizeof KEY);
            size_t n = msg_encode_answer(m.nonce, &m.anycast, m.has_unicast6 ? m.unicast6 : NULL,
                                         m.has_unicast4 ? m.unicast4 : NULL, m.ttl,
                                         m.has_tag ? KEY : NULL, sizeof KEY, m.key_id, out);
            CHECK(n > 0 && n <= MSG_MAX_LEN);
            CHECK(msg_decode(out, n, &again) == MSG_OK);
            CHECK(again.kind == MSG_KIND_ANSWER && again.ttl == m.ttl &&
                  again.has_unicast6 == m.has_unicast6 && again.has_unicast4 == m.has_unicast4 &&
                  ip_equal(&again.anycast, &m.anycast) && again.has_tag == m.has_tag);
            CHECK(!m.has_unicast6 || !memcmp(again.unicast6, m.unicast6, 16));
            CHECK(!m.has_unicast4 || !memcmp(again.unicast4, m.unicast4, 4));
            if (m.has_tag) {
                CHECK(msg_tag_valid(out, &again, KEY, sizeof KEY));
                CHECK(!msg_tag_valid(out, &again, KEY, sizeof KEY - 1));
            }
        }
    }
    free(buf);
    return 0;
}
