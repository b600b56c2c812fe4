/* Cache first, probe on a miss; one probe per AA at a time, the others wait for it (bounded). */
#include <errno.h>

#include "internal.h"

int resolve_address(const struct aarp_config *c, const struct ipaddr *aa, struct resolution *r,
                    int *cached)
{
    /* The longest a probe can take, plus slack: a waiter never waits longer. */
    int64_t budget = (int64_t)c->timeout_ms * (c->retries + 1) + 50;
    *cached = 0;
    int rc = cache_acquire(aa, r, now_ms() + budget);
    if (rc == CACHE_HIT) {
        *cached = 1;
        return r->state == RES_POSITIVE;
    }
    if (rc == CACHE_TIMEOUT) {
        r->state = RES_FAILED;
        r->how = HOW_NONE;
        r->ttl = 0;
        return 0;
    }
    if (probe_resolve(c, aa, r) != 0) {
        cache_abandon(aa); /* interrupted: nobody's fault, nothing to remember */
        return 0;
    }
    cache_complete(aa, r);
    return r->state == RES_POSITIVE;
}
