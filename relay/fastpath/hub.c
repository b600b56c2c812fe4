/* The server-mode data plane: tables, the control API and memory reclamation.
 *
 * hub.h explains the layout and the concurrency; in short: the control thread (Python) is the
 * only writer of the tables, publishes replacements with one atomic store and retires the old
 * objects, which are freed once every worker has announced a newer epoch or sleeps. Workers
 * take no lock for lookups and never wait for Python.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cipher.h"
#include "hub.h"

_Static_assert(sizeof(fp_remote) % 8 == 0, "fp_remote is copied as 64-bit words");

double hub_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void fp_random_key(uint64_t key[2]) {
    if (getrandom(key, 16, 0) != 16) {
        key[0] = 0x9e3779b97f4a7c15ull ^ (uint64_t)time(NULL);
        key[1] = 0xc2b2ae3d27d4eb4full ^ (uint64_t)(uintptr_t)key;
    }
}

/* ---- epochs ------------------------------------------------------------------------------ */

/* Under ctl_lock: `p` is unlinked; free it with fn once no worker can still see it. */
static void retire(fp_hub *h, void *p, void (*fn)(void *)) {
    if (!p)
        return;
    if (!h->started) { /* no worker runs: nobody can see it */
        fn(p);
        return;
    }
    if (h->nretired == h->retired_cap) {
        size_t cap = h->retired_cap ? h->retired_cap * 2 : 64;
        hub_retired *grown = realloc(h->retired, cap * sizeof(*grown));
        if (!grown) { /* cannot wait: wait for the workers instead (rare) */
            uint64_t e = atomic_fetch_add(&h->epoch, 1);
            for (int i = 0; i < h->nworkers; i++)
                for (uint64_t we; (we = atomic_load(&h->w[i]->epoch)) && we <= e;)
                    sched_yield();
            fn(p);
            return;
        }
        h->retired = grown;
        h->retired_cap = cap;
    }
    h->retired[h->nretired++] = (hub_retired){p, fn, atomic_fetch_add(&h->epoch, 1)};
}

static void reclaim(fp_hub *h) {
    uint64_t min = UINT64_MAX;
    for (int i = 0; i < h->nworkers; i++) {
        uint64_t e = atomic_load(&h->w[i]->epoch);
        if (e && e < min)
            min = e;
    }
    size_t keep = 0;
    for (size_t i = 0; i < h->nretired; i++) {
        hub_retired r = h->retired[i];
        if (r.epoch < min)
            r.fn(r.p);
        else
            h->retired[keep++] = r;
    }
    h->nretired = keep;
}

/* ---- connections ------------------------------------------------------------------------- */

hub_conn *hub_conn_at(fp_hub *h, uint16_t mux) {
    return atomic_load_explicit(&h->conns[mux], memory_order_acquire);
}

static void rx_free(hub_rx *rx) {
    if (!rx)
        return;
    fp_satp_free(rx->satp);
    fp_replay_free(rx->replay);
    pthread_mutex_destroy(&rx->lock);
    free(rx);
}

static void tx_free(hub_tx *tx) {
    if (!tx)
        return;
    fp_satp_free(tx->satp);
    pthread_mutex_destroy(&tx->lock);
    free(tx);
}

static void keys_free(void *p) {
    hub_keys *k = p;
    rx_free(atomic_load(&k->rx));
    tx_free(atomic_load(&k->tx));
    fp_wipe(k, sizeof(*k));
    free(k);
}

static void conn_free(void *p) {
    hub_conn *c = p;
    keys_free(atomic_load(&c->keys));
    free(c);
}

static fp_satp *satp_of(const hub_keys *k) {
    char err[200];
    const fp_hub_conn_spec *s = &k->spec;
    return fp_satp_new(&s->suite, s->key_len ? s->key : NULL, s->key_len, s->salt, s->role, err,
                       sizeof(err));
}

/* The halves are made on first use by whoever needs them; a racing loser frees its copy. */
hub_rx *hub_rx_of(fp_hub *h, hub_keys *k) {
    hub_rx *rx = atomic_load_explicit(&k->rx, memory_order_acquire);
    if (rx)
        return rx;
    rx = calloc(1, sizeof(*rx));
    if (!rx)
        return NULL;
    pthread_mutex_init(&rx->lock, NULL);
    fp_replay_params p = h->cfg.replay;
    p.size = k->spec.window;
    rx->satp = satp_of(k);
    rx->replay = fp_replay_new(&p);
    if (!rx->satp || !rx->replay) {
        rx_free(rx);
        return NULL;
    }
    hub_rx *none = NULL;
    if (!atomic_compare_exchange_strong(&k->rx, &none, rx)) {
        rx_free(rx);
        return none;
    }
    atomic_fetch_add(&h->active_rx, 1);
    return rx;
}

hub_tx *hub_tx_of(fp_hub *h, hub_keys *k) {
    hub_tx *tx = atomic_load_explicit(&k->tx, memory_order_acquire);
    if (tx)
        return tx;
    tx = calloc(1, sizeof(*tx));
    if (!tx)
        return NULL;
    pthread_mutex_init(&tx->lock, NULL);
    tx->satp = satp_of(k);
    if (!tx->satp) {
        tx_free(tx);
        return NULL;
    }
    hub_tx *none = NULL;
    if (!atomic_compare_exchange_strong(&k->tx, &none, tx)) {
        tx_free(tx);
        return none;
    }
    atomic_fetch_add(&h->active_tx, 1);
    return tx;
}

void hub_remote_load(const hub_conn *c, fp_remote *r) {
    uint64_t w[HUB_REMOTE_WORDS];
    for (;;) {
        uint32_t s1 = atomic_load_explicit(&c->rlock, memory_order_acquire);
        if (s1 & 1)
            continue;
        for (size_t i = 0; i < HUB_REMOTE_WORDS; i++)
            w[i] = atomic_load_explicit(&c->remote[i], memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&c->rlock, memory_order_relaxed) == s1)
            break;
    }
    memcpy(r, w, sizeof(*r));
}

void hub_remote_store(hub_conn *c, const fp_remote *r) {
    uint64_t w[HUB_REMOTE_WORDS];
    memset(w, 0, sizeof(w));
    memcpy(w, r, sizeof(*r));
    uint32_t s = atomic_load_explicit(&c->rlock, memory_order_relaxed);
    for (;;) {
        if (s & 1) {
            s = atomic_load_explicit(&c->rlock, memory_order_relaxed);
            continue;
        }
        if (atomic_compare_exchange_weak_explicit(&c->rlock, &s, s + 1, memory_order_acquire,
                                                  memory_order_relaxed))
            break;
    }
    atomic_thread_fence(memory_order_release);
    for (size_t i = 0; i < HUB_REMOTE_WORDS; i++)
        atomic_store_explicit(&c->remote[i], w[i], memory_order_relaxed);
    atomic_store_explicit(&c->rlock, s + 2, memory_order_release);
}

int hub_remote_equal(const fp_remote *a, const fp_remote *b) {
    if (a->kind != b->kind)
        return 0;
    if (a->kind == FP_RK_NONE)
        return 1;
    if (a->kind == FP_RK_STREAM)
        return a->stream == b->stream;
    if (a->addr_len != b->addr_len || a->addr_len < sizeof(sa_family_t))
        return 0;
    const struct sockaddr *x = (const void *)a->addr, *y = (const void *)b->addr;
    if (x->sa_family != y->sa_family)
        return 0;
    if (x->sa_family == AF_INET) {
        const struct sockaddr_in *p = (const void *)a->addr, *q = (const void *)b->addr;
        return p->sin_port == q->sin_port && p->sin_addr.s_addr == q->sin_addr.s_addr;
    }
    if (x->sa_family == AF_INET6) {
        const struct sockaddr_in6 *p = (const void *)a->addr, *q = (const void *)b->addr;
        return p->sin6_port == q->sin6_port && p->sin6_scope_id == q->sin6_scope_id &&
               !memcmp(&p->sin6_addr, &q->sin6_addr, sizeof(p->sin6_addr));
    }
    return 0;
}

void hub_touch(fp_hub *h, hub_conn *c) {
    if (atomic_load_explicit(&c->touched, memory_order_relaxed))
        return;
    if (atomic_exchange(&c->touched, 1))
        return;
    pthread_mutex_lock(&h->ev_lock);
    if (h->ntouched < HUB_MUXES) /* each MUX is in the list at most once */
        h->touched[h->ntouched++] = c->mux;
    pthread_mutex_unlock(&h->ev_lock);
}

static void signal_python(fp_hub *h) {
    uint64_t one = 1;
    ssize_t r = write(h->ev_fd, &one, sizeof(one));
    (void)r; /* a full counter is still readable */
}

void hub_push_event(fp_hub *h, const fp_hub_event *ev) {
    int lost = 0;
    pthread_mutex_lock(&h->ev_lock);
    if (h->ev_count < HUB_EVENT_SLOTS) {
        h->events[(h->ev_head + h->ev_count) % HUB_EVENT_SLOTS] = *ev;
        h->ev_count++;
    } else {
        lost = 1; /* fp_hub_collect reports remotes too: nothing is lost for good */
    }
    pthread_mutex_unlock(&h->ev_lock);
    if (lost)
        atomic_fetch_add_explicit(&h->w[h->nworkers]->nc[FP_NC_EVENTS_LOST], 1,
                                  memory_order_relaxed);
    signal_python(h);
}

void hub_push_slow(hub_worker *w, uint16_t mux, uint16_t ptype, const uint8_t *p, size_t n) {
    fp_hub *h = w->h;
    uint8_t *copy = malloc(n ? n : 1); /* rare: packets too big for the tunnel */
    if (!copy)
        return;
    memcpy(copy, p, n);
    pthread_mutex_lock(&h->ev_lock);
    if (h->slow_count < HUB_SLOW_SLOTS) {
        h->slow[(h->slow_head + h->slow_count) % HUB_SLOW_SLOTS] = (hub_slow){mux, ptype, n, copy};
        h->slow_count++;
        copy = NULL;
    }
    pthread_mutex_unlock(&h->ev_lock);
    if (copy) {
        free(copy);
        return;
    }
    hub_nc(w, FP_NC_SLOW, 1);
    signal_python(h);
}

/* The same checks fp_satp_new makes, without building the AES key schedules (10,000
 * connections load in milliseconds; the schedules come with the first packet). */
static const char *spec_error(const fp_hub_conn_spec *s) {
    const fp_suite *u = &s->suite;
    int c = u->cipher_key_len, k = u->kd_key_len;
    if (c && !fp_aes_key_len_ok(c))
        return "cipher key length must be 0, 16, 24 or 32";
    if (k && !fp_aes_key_len_ok(k))
        return "kd key length must be 0, 16, 24 or 32";
    if (u->tag_len < 0 || u->tag_len > FP_MAX_TAG || (!u->auth && u->tag_len))
        return "tag length must be 0..20, and 0 without auth";
    if (s->role != 0 && s->role != 1)
        return "role must be 0 (left) or 1 (right)";
    if (k && s->key_len != (uint32_t)k)
        return "the master key length must equal the kd key length";
    if (!k && s->key_len)
        return "no master key with null kd";
    if (s->window > (1u << 20))
        return "the replay window holds 0..1048576 sequence numbers";
    return NULL;
}

static int same_keys(const fp_hub_conn_spec *a, const fp_hub_conn_spec *b) {
    return a->role == b->role && !memcmp(&a->suite, &b->suite, sizeof(a->suite)) &&
           a->key_len == b->key_len && !fp_memcmp_ct(a->key, b->key, sizeof(a->key)) &&
           !fp_memcmp_ct(a->salt, b->salt, sizeof(a->salt));
}

static hub_keys *keys_new(const fp_hub_conn_spec *s) {
    hub_keys *k = calloc(1, sizeof(*k));
    if (!k)
        return NULL;
    k->spec = *s;
    if (!s->key_len)
        memset(k->spec.key, 0, sizeof(k->spec.key));
    k->overhead = (uint32_t)(FP_DATA_OFF + s->suite.tag_len);
    return k;
}

static void mark_flood(fp_hub *h) {
    if (h->cfg.tap && h->cfg.routing && h->cfg.tunneling)
        atomic_store(&h->flood_dirty, 1);
}

/* 0 unchanged, 1 added, 2 new keys, 3 new window, -1 error. */
static int put_one(fp_hub *h, const fp_hub_conn_spec *s, uint32_t seq, char *err, size_t errlen) {
    const char *why = spec_error(s);
    if (why) {
        snprintf(err, errlen, "mux %u: %s", s->mux, why);
        return -1;
    }
    hub_conn *c = hub_conn_at(h, s->mux);
    if (!c) {
        c = aligned_alloc(64, (sizeof(hub_conn) + 63) / 64 * 64);
        hub_keys *k = keys_new(s);
        if (!c || !k) {
            free(c);
            free(k);
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        memset(c, 0, sizeof(*c));
        c->mux = s->mux;
        c->gen = ++h->next_gen;
        atomic_init(&c->keys, k);
        atomic_init(&c->seq, seq);
        atomic_init(&c->learn_budget, HUB_LEARN_BUDGET);
        atomic_store_explicit(&h->conns[s->mux], c, memory_order_release);
        h->nconns++;
        return 1;
    }
    hub_keys *old = atomic_load(&c->keys);
    int keys_same = same_keys(&old->spec, s);
    if (keys_same && old->spec.window == s->window)
        return 0;
    hub_keys *k = keys_new(s);
    if (!k) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (!keys_same)
        atomic_store(&c->seq, seq); /* a new sequence space */
    atomic_store(&c->keys, k);
    retire(h, old, keys_free);
    return keys_same ? 3 : 2;
}

long fp_hub_conn_put(fp_hub *h, const fp_hub_conn_spec *specs, const uint32_t *seqs, size_t n,
                     char *err, size_t errlen) {
    pthread_mutex_lock(&h->ctl_lock);
    long done = 0;
    for (size_t i = 0; i < n; i++, done++)
        if (put_one(h, &specs[i], seqs ? seqs[i] : 0, err, errlen) < 0) {
            done = -1;
            break;
        }
    mark_flood(h);
    pthread_mutex_unlock(&h->ctl_lock);
    return done;
}

int fp_hub_conn_remove(fp_hub *h, uint16_t mux) {
    pthread_mutex_lock(&h->ctl_lock);
    hub_conn *c = hub_conn_at(h, mux);
    if (c) {
        atomic_store(&h->conns[mux], NULL);
        h->nconns--;
        retire(h, c, conn_free);
        mark_flood(h);
    }
    pthread_mutex_unlock(&h->ctl_lock);
    return c != NULL;
}

int fp_hub_conn_set_remote(fp_hub *h, uint16_t mux, const fp_remote *r) {
    fp_remote none;
    memset(&none, 0, sizeof(none));
    if (!r)
        r = &none;
    if (r->kind > FP_RK_STREAM || r->addr_len > sizeof(r->addr))
        return -EINVAL;
    pthread_mutex_lock(&h->ctl_lock);
    hub_conn *c = hub_conn_at(h, mux);
    if (c) {
        fp_remote clean = none;
        if (r->kind != FP_RK_NONE) {
            clean.kind = r->kind;
            clean.stream = r->kind == FP_RK_STREAM ? r->stream : 0;
            clean.addr_len = r->addr_len;
            memcpy(clean.addr, r->addr, r->addr_len);
        }
        hub_remote_store(c, &clean);
        mark_flood(h);
    }
    pthread_mutex_unlock(&h->ctl_lock);
    return c ? 0 : -ENOENT;
}

int fp_hub_conn_set_seq(fp_hub *h, uint16_t mux, uint32_t seq, int forward_only) {
    pthread_mutex_lock(&h->ctl_lock);
    hub_conn *c = hub_conn_at(h, mux);
    if (c) {
        if (!forward_only) {
            atomic_store(&c->seq, seq);
        } else {
            uint32_t cur = atomic_load(&c->seq);
            while (seq - cur - 1 < 0x7fffffffu) /* seq is ahead of cur (serial arithmetic) */
                if (atomic_compare_exchange_weak(&c->seq, &cur, seq))
                    break;
        }
    }
    pthread_mutex_unlock(&h->ctl_lock);
    return c ? 0 : -ENOENT;
}

int fp_hub_conn_replay_advance(fp_hub *h, uint16_t mux, uint16_t sender_id, uint32_t high) {
    int rc = -ENOENT;
    pthread_mutex_lock(&h->ctl_lock);
    hub_conn *c = hub_conn_at(h, mux);
    hub_rx *rx = c ? hub_rx_of(h, atomic_load(&c->keys)) : NULL;
    if (rx) {
        pthread_mutex_lock(&rx->lock);
        fp_replay_advance(rx->replay, sender_id, high, hub_mono());
        pthread_mutex_unlock(&rx->lock);
        rc = 0;
    } else if (c) {
        rc = -ENOMEM;
    }
    pthread_mutex_unlock(&h->ctl_lock);
    return rc;
}

static size_t replay_of(hub_conn *c, uint16_t *ids, uint32_t *highs, size_t max) {
    hub_rx *rx = atomic_load(&atomic_load(&c->keys)->rx);
    if (!rx)
        return 0;
    pthread_mutex_lock(&rx->lock);
    size_t n = fp_replay_senders(rx->replay, ids, highs, max);
    pthread_mutex_unlock(&rx->lock);
    return n;
}

size_t fp_hub_conn_replay(fp_hub *h, uint16_t mux, uint16_t *ids, uint32_t *highs, size_t max) {
    pthread_mutex_lock(&h->ctl_lock);
    hub_conn *c = hub_conn_at(h, mux);
    size_t n = c ? replay_of(c, ids, highs, max) : 0;
    pthread_mutex_unlock(&h->ctl_lock);
    return n;
}

static void stats_of(hub_conn *c, fp_hub_conn_stats *st) {
    memset(st, 0, sizeof(*st));
    st->mux = c->mux;
    st->gen = c->gen;
    st->next_seq = atomic_load(&c->seq);
    st->rx_packets = atomic_load_explicit(&c->rxc[HUB_RX_PACKETS], memory_order_relaxed);
    st->rx_bytes = atomic_load_explicit(&c->rxc[HUB_RX_BYTES], memory_order_relaxed);
    st->restarts = atomic_load_explicit(&c->rxc[HUB_RX_RESTARTS], memory_order_relaxed);
    st->tx_packets = atomic_load_explicit(&c->txc[HUB_TX_PACKETS], memory_order_relaxed);
    st->tx_bytes = atomic_load_explicit(&c->txc[HUB_TX_BYTES], memory_order_relaxed);
    static const int rx_drop[][2] = {
        {FP_CD_SHORT, HUB_RX_SHORT}, {FP_CD_AUTH, HUB_RX_AUTH}, {FP_CD_REPLAY, HUB_RX_REPLAY},
        {FP_CD_TOO_OLD, HUB_RX_TOO_OLD}, {FP_CD_PAYLOAD_TYPE, HUB_RX_PAYLOAD_TYPE}};
    static const int tx_drop[][2] = {{FP_CD_NO_REMOTE, HUB_TX_NO_REMOTE},
                                     {FP_CD_OVERSIZE, HUB_TX_OVERSIZE},
                                     {FP_CD_SEND_ERROR, HUB_TX_SEND_ERROR}};
    for (size_t i = 0; i < sizeof(rx_drop) / sizeof(rx_drop[0]); i++)
        st->drops[rx_drop[i][0]] = atomic_load_explicit(&c->rxc[rx_drop[i][1]],
                                                        memory_order_relaxed);
    for (size_t i = 0; i < sizeof(tx_drop) / sizeof(tx_drop[0]); i++)
        st->drops[tx_drop[i][0]] = atomic_load_explicit(&c->txc[tx_drop[i][1]],
                                                        memory_order_relaxed);
    uint16_t ids[256];
    uint32_t highs[256];
    size_t n = replay_of(c, ids, highs, 256);
    st->nsenders = (uint32_t)n;
    for (size_t i = 0; i < n && i < 4; i++) {
        st->sender_ids[i] = ids[i];
        st->sender_highs[i] = highs[i];
    }
    hub_remote_load(c, &st->remote);
}

int fp_hub_conn_get(fp_hub *h, uint16_t mux, fp_hub_conn_stats *st, fp_remote *remote) {
    pthread_mutex_lock(&h->ctl_lock);
    hub_conn *c = hub_conn_at(h, mux);
    if (c) {
        stats_of(c, st);
        if (remote)
            *remote = st->remote;
    }
    pthread_mutex_unlock(&h->ctl_lock);
    return c != NULL;
}

size_t fp_hub_collect(fp_hub *h, fp_hub_conn_stats *out, size_t max) {
    pthread_mutex_lock(&h->ctl_lock);
    size_t n = 0;
    for (;;) {
        uint16_t batch[256];
        size_t take = 0;
        pthread_mutex_lock(&h->ev_lock);
        while (take < 256 && h->ntouched && n + take < max)
            batch[take++] = h->touched[--h->ntouched];
        pthread_mutex_unlock(&h->ev_lock);
        if (!take)
            break;
        for (size_t i = 0; i < take; i++) {
            hub_conn *c = hub_conn_at(h, batch[i]);
            if (!c)
                continue;
            atomic_store(&c->touched, 0); /* before reading: later changes touch it again */
            stats_of(c, &out[n++]);
        }
    }
    pthread_mutex_unlock(&h->ctl_lock);
    return n;
}

void fp_hub_node_counters(fp_hub *h, uint64_t *out, size_t n) {
    memset(out, 0, n * sizeof(*out));
    for (int i = 0; i <= h->nworkers; i++)
        for (size_t k = 0; k < n && k < FP_NC_COUNT; k++)
            out[k] += atomic_load_explicit(&h->w[i]->nc[k], memory_order_relaxed);
}

/* ---- routes and MACs --------------------------------------------------------------------- */

static void lpm_free_fn(void *p) { fp_lpm_free(p); }
static void mactab_free_fn(void *p) { fp_mactab_free(p); }

int fp_hub_routes_set(fp_hub *h, const fp_route *routes, size_t n, char *err, size_t errlen) {
    fp_lpm *t = fp_lpm_build(routes, n, err, errlen); /* outside the lock: may take a while */
    if (!t)
        return -1;
    pthread_mutex_lock(&h->ctl_lock);
    fp_lpm *old = atomic_exchange(&h->lpm, t);
    retire(h, old, lpm_free_fn);
    pthread_mutex_unlock(&h->ctl_lock);
    return 0;
}

int fp_hub_route_lookup(fp_hub *h, int version, const uint8_t *addr) {
    pthread_mutex_lock(&h->ctl_lock);
    int mux = fp_lpm_lookup(atomic_load(&h->lpm), version, addr);
    pthread_mutex_unlock(&h->ctl_lock);
    return mux;
}

int fp_hub_mac_set(fp_hub *h, const uint8_t *mac, uint16_t mux) {
    int rc = 0;
    pthread_mutex_lock(&h->ctl_lock);
    fp_mactab *t = atomic_load(&h->macs);
    if (fp_mactab_set(t, mac, mux)) {
        fp_mactab *g = fp_mactab_grow(t);
        if (!g || fp_mactab_set(g, mac, mux)) {
            fp_mactab_free(g);
            rc = -ENOMEM;
        } else {
            atomic_store(&h->macs, g);
            retire(h, t, mactab_free_fn);
        }
    }
    pthread_mutex_unlock(&h->ctl_lock);
    return rc;
}

void fp_hub_mac_forget(fp_hub *h, uint16_t mux) {
    pthread_mutex_lock(&h->ctl_lock);
    fp_mactab_remove_mux(atomic_load(&h->macs), mux);
    pthread_mutex_unlock(&h->ctl_lock);
}

int fp_hub_mac_get(fp_hub *h, const uint8_t *mac) {
    pthread_mutex_lock(&h->ctl_lock);
    int mux = fp_mactab_get(atomic_load(&h->macs), mac);
    pthread_mutex_unlock(&h->ctl_lock);
    return mux;
}

/* ---- streams ----------------------------------------------------------------------------- */

hub_stream *hub_stream_get(fp_hub *h, uint32_t id) {
    hub_stream *s = atomic_load_explicit(&h->streams[id & (HUB_MAX_STREAMS - 1)],
                                         memory_order_acquire);
    return s && s->id == id ? s : NULL;
}

uint32_t fp_hub_stream_add(fp_hub *h, int fd, int framing, const uint8_t *peer,
                           uint32_t peer_len, int synced, uint32_t keepalive_ms) {
    const fp_framing *f = fp_framing_get(framing);
    if (!f || fd < 0 || peer_len > sizeof(((fp_remote *)0)->addr) || !h->started)
        return 0;
    hub_stream *s = calloc(1, sizeof(*s));
    if (!s)
        return 0;
    s->fd = fd;
    s->framing = f;
    s->nc_rx = framing == FP_FRAMING_ANYCAST ? FP_NC_ANYCAST_RX : FP_NC_TCP_RX;
    s->nc_tx = framing == FP_FRAMING_ANYCAST ? FP_NC_ANYCAST_TX : FP_NC_TCP_TX;
    s->fstate = f->state_size ? calloc(1, f->state_size) : NULL;
    pthread_mutex_init(&s->out_lock, NULL);
    s->in_cap = 16384;
    s->in = malloc(s->in_cap);
    if ((f->state_size && !s->fstate) || !s->in) {
        s->fd = -1;
        hub_stream_free(s);
        return 0;
    }
    if (f->init) {
        fp_stream_opts o = {.synced = synced, .keepalive_ms = keepalive_ms,
                            .max_body = (size_t)h->cfg.max_datagram};
        f->init(s->fstate, &o);
    }
    pthread_mutex_lock(&h->ctl_lock);
    uint32_t id = 0;
    for (uint32_t tries = 0; tries < HUB_MAX_STREAMS; tries++) {
        uint32_t cand = ++h->stream_seq;
        if (!(cand & (HUB_MAX_STREAMS - 1)))
            continue; /* index 0 is unused, so an id is never 0 */
        if (!atomic_load(&h->streams[cand & (HUB_MAX_STREAMS - 1)])) {
            id = cand;
            break;
        }
    }
    if (id) {
        s->id = id;
        s->peer.kind = FP_RK_STREAM;
        s->peer.stream = id;
        s->peer.addr_len = peer_len;
        memcpy(s->peer.addr, peer, peer_len);
        s->worker = (int)(id % (uint32_t)h->nworkers);
        atomic_store(&s->last_rx_ns, (uint64_t)(hub_mono() * 1e9));
        atomic_store(&h->streams[id & (HUB_MAX_STREAMS - 1)], s);
        if (hub_stream_register(h, s) < 0) {
            atomic_store(&h->streams[id & (HUB_MAX_STREAMS - 1)], NULL);
            id = 0;
        } else {
            h->nstreams++;
        }
    }
    pthread_mutex_unlock(&h->ctl_lock);
    if (!id) {
        s->fd = -1; /* the caller keeps its fd on failure */
        hub_stream_free(s);
    }
    return id;
}

int fp_hub_stream_close(fp_hub *h, uint32_t id) {
    pthread_mutex_lock(&h->ctl_lock);
    hub_stream *s = hub_stream_get(h, id);
    if (s && !atomic_load(&s->dead))
        shutdown(s->fd, SHUT_RDWR); /* the owner sees the end and reports it */
    pthread_mutex_unlock(&h->ctl_lock);
    return s ? 0 : -ENOENT;
}

int fp_hub_stream_drop(fp_hub *h, uint32_t id) {
    pthread_mutex_lock(&h->ctl_lock);
    hub_stream *s = hub_stream_get(h, id);
    int rc = -ENOENT;
    if (s && !atomic_exchange(&s->dead, 1)) {
        int on = 1;
        rc = setsockopt(s->fd, IPPROTO_TCP, TCP_REPAIR, &on, sizeof(on)) < 0 ? -errno : 0;
        /* the owner no longer reads it; fp_hub_maintain closes it after the epoch */
        epoll_ctl(h->w[s->worker]->epfd, EPOLL_CTL_DEL, s->fd, NULL);
        fp_hub_event ev;
        memset(&ev, 0, sizeof(ev));
        ev.kind = FP_HEV_STREAM_CLOSED;
        ev.remote = s->peer;
        hub_push_event(h, &ev);
    }
    pthread_mutex_unlock(&h->ctl_lock);
    return rc;
}

int fp_hub_stream_stats(fp_hub *h, uint32_t id, uint64_t *out, size_t n) {
    pthread_mutex_lock(&h->ctl_lock);
    hub_stream *s = hub_stream_get(h, id);
    int k = -1;
    if (s && !atomic_load(&s->dead))
        k = s->framing->stats ? s->framing->stats(s->fstate, out, n) : 0;
    pthread_mutex_unlock(&h->ctl_lock);
    return k;
}

double fp_hub_stream_last_rx(fp_hub *h, uint32_t id) {
    pthread_mutex_lock(&h->ctl_lock);
    hub_stream *s = hub_stream_get(h, id);
    double t = s && !atomic_load(&s->dead) ? (double)atomic_load(&s->last_rx_ns) / 1e9 : -1.0;
    pthread_mutex_unlock(&h->ctl_lock);
    return t;
}

/* ---- events, slow packets, sends --------------------------------------------------------- */

int fp_hub_event_fd(fp_hub *h) { return h->ev_fd; }

int fp_hub_next_event(fp_hub *h, fp_hub_event *ev) {
    int got = 0;
    pthread_mutex_lock(&h->ev_lock);
    if (h->ev_count) {
        *ev = h->events[h->ev_head];
        h->ev_head = (h->ev_head + 1) % HUB_EVENT_SLOTS;
        h->ev_count--;
        got = 1;
    }
    pthread_mutex_unlock(&h->ev_lock);
    return got;
}

long fp_hub_next_slow(fp_hub *h, uint16_t *mux, uint16_t *ptype, uint8_t *buf, size_t cap) {
    hub_slow p = {0, 0, 0, NULL};
    pthread_mutex_lock(&h->ev_lock);
    if (h->slow_count) {
        p = h->slow[h->slow_head];
        h->slow_head = (h->slow_head + 1) % HUB_SLOW_SLOTS;
        h->slow_count--;
    }
    pthread_mutex_unlock(&h->ev_lock);
    if (!p.data)
        return 0;
    size_t n = p.len < cap ? p.len : cap;
    memcpy(buf, p.data, n);
    free(p.data);
    *mux = p.mux;
    *ptype = p.ptype;
    return (long)n;
}

int fp_hub_send(fp_hub *h, uint16_t mux, uint16_t ptype, const uint8_t *payload, size_t len) {
    if (len > HUB_MAX_INNER)
        return -EMSGSIZE;
    pthread_mutex_lock(&h->ctl_lock);
    hub_worker *w = h->w[h->nworkers];
    hub_conn *c = hub_conn_at(h, mux);
    int rc = -ENOENT;
    if (c) {
        w->now = hub_mono();
        w->now_ns = (uint64_t)(w->now * 1e9);
        rc = hub_seal_to(w, c, ptype, payload, len, 0) ? 0 : -EMSGSIZE;
        hub_flush(w);
    }
    pthread_mutex_unlock(&h->ctl_lock);
    return rc;
}

static void capture_begin(hub_worker *w, fp_hub_out *outs, size_t maxouts, uint8_t *buf,
                          size_t cap) {
    w->cap_outs = outs;
    w->cap_max = maxouts;
    w->cap_buf = buf;
    w->cap_size = cap;
    w->cap_n = w->cap_used = 0;
    w->cap_overflow = 0;
}

static long capture_end(hub_worker *w) {
    long n = w->cap_overflow ? -1 : (long)w->cap_n;
    w->cap_outs = NULL;
    w->cap_buf = NULL;
    return n;
}

long fp_hub_probe(fp_hub *h, int from_device, const uint8_t *pkt, size_t len,
                  const fp_remote *from, double now, fp_hub_out *outs, size_t maxouts,
                  uint8_t *buf, size_t cap) {
    if (len > HUB_MAX_INNER)
        return -1;
    pthread_mutex_lock(&h->ctl_lock);
    hub_worker *w = h->w[h->nworkers];
    capture_begin(w, outs, maxouts, buf, cap);
    w->now = now;
    uint8_t *copy = w->scratch + 64; /* writable, with room for the largest tag */
    memcpy(copy, pkt, len);
    if (from_device) {
        hub_from_dev(w, copy, len);
    } else {
        fp_remote r;
        memset(&r, 0, sizeof(r));
        if (from)
            r = *from;
        hub_from_net(w, copy, len, &r);
    }
    long n = capture_end(w);
    pthread_mutex_unlock(&h->ctl_lock);
    return n;
}

long fp_hub_probe_send(fp_hub *h, uint16_t mux, uint16_t ptype, const uint8_t *payload,
                       size_t len, fp_hub_out *outs, size_t maxouts, uint8_t *buf, size_t cap) {
    if (len > HUB_MAX_INNER)
        return -1;
    pthread_mutex_lock(&h->ctl_lock);
    hub_worker *w = h->w[h->nworkers];
    hub_conn *c = hub_conn_at(h, mux);
    capture_begin(w, outs, maxouts, buf, cap);
    if (c)
        hub_seal_to(w, c, ptype, payload, len, 0);
    long n = capture_end(w);
    pthread_mutex_unlock(&h->ctl_lock);
    return n;
}

/* ---- upkeep ------------------------------------------------------------------------------ */

static void rebuild_flood(fp_hub *h) {
    if (!atomic_exchange(&h->flood_dirty, 0))
        return;
    size_t n = 0;
    for (size_t m = 0; m < HUB_MUXES; m++) {
        hub_conn *c = hub_conn_at(h, (uint16_t)m);
        if (c && atomic_load_explicit(&c->remote[0], memory_order_relaxed) & 0xffffffffu)
            n++;
    }
    hub_flood *f = malloc(sizeof(*f) + (n ? n : 1) * sizeof(uint16_t));
    if (!f) {
        atomic_store(&h->flood_dirty, 1);
        return;
    }
    f->n = 0;
    for (size_t m = 0; m < HUB_MUXES && f->n < n; m++) {
        hub_conn *c = hub_conn_at(h, (uint16_t)m);
        if (c && atomic_load_explicit(&c->remote[0], memory_order_relaxed) & 0xffffffffu)
            f->mux[f->n++] = (uint16_t)m;
    }
    hub_flood *old = atomic_exchange(&h->flood, f);
    retire(h, old, free);
}

void fp_hub_maintain(fp_hub *h) {
    pthread_mutex_lock(&h->ctl_lock);
    rebuild_flood(h);
    for (size_t i = 0; i < HUB_MAX_STREAMS; i++) {
        hub_stream *s = atomic_load(&h->streams[i]);
        if (s && atomic_load(&s->dead)) {
            atomic_store(&h->streams[i], NULL);
            h->nstreams--;
            retire(h, s, hub_stream_free);
        }
    }
    if (h->cfg.tap)
        for (size_t m = 0; m < HUB_MUXES; m++) {
            hub_conn *c = hub_conn_at(h, (uint16_t)m);
            if (c)
                atomic_store_explicit(&c->learn_budget, HUB_LEARN_BUDGET, memory_order_relaxed);
        }
    reclaim(h);
    pthread_mutex_unlock(&h->ctl_lock);
}

void fp_hub_info_get(fp_hub *h, fp_hub_info *o) {
    pthread_mutex_lock(&h->ctl_lock);
    memset(o, 0, sizeof(*o));
    o->workers = (uint32_t)h->nworkers;
    o->connections = h->nconns;
    o->streams = h->nstreams;
    o->offloads = (h->tun_offload ? FP_OFF_TUN : 0) | (h->tun_uso ? FP_OFF_TUN_USO : 0) |
                  (h->udp_gso ? FP_OFF_UDP_GSO : 0) | (h->udp_gro ? FP_OFF_UDP_GRO : 0);
    /* what a configured connection costs, idle or not, plus the fixed MUX index */
    size_t conn_size = (sizeof(hub_conn) + 63) / 64 * 64;
    o->table_bytes = HUB_MUXES * sizeof(hub_conn *) +
                     (uint64_t)h->nconns * (conn_size + sizeof(hub_keys)) +
                     fp_lpm_bytes(atomic_load(&h->lpm)) + fp_mactab_bytes(atomic_load(&h->macs));
    o->index_bytes = HUB_MUXES * sizeof(hub_conn *);
    o->active_rx = atomic_load(&h->active_rx);
    o->active_tx = atomic_load(&h->active_tx);
    pthread_mutex_unlock(&h->ctl_lock);
}

/* ---- life cycle -------------------------------------------------------------------------- */

fp_hub *fp_hub_new(const fp_hub_config *cfg, char *err, size_t errlen) {
    if (cfg->workers < 1 || cfg->workers > FP_HUB_MAX_WORKERS) {
        snprintf(err, errlen, "workers must be 1..%d", FP_HUB_MAX_WORKERS);
        return NULL;
    }
    if (cfg->max_datagram < 64 || cfg->max_datagram > 65535) {
        snprintf(err, errlen, "max_datagram must be 64..65535");
        return NULL;
    }
    fp_hub *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->cfg = *cfg;
    h->ev_fd = -1;
    h->any_dev = -1;
    for (int k = 0; k < 2; k++)
        h->any_sock[k][0] = h->any_sock[k][1] = -1;
    pthread_mutex_init(&h->ctl_lock, NULL);
    pthread_mutex_init(&h->ev_lock, NULL);
    atomic_init(&h->epoch, 1);
    h->nworkers = cfg->workers;
    h->conns = calloc(HUB_MUXES, sizeof(*h->conns)); /* untouched pages cost nothing */
    h->touched = malloc(HUB_MUXES * sizeof(uint16_t));
    atomic_init(&h->macs, cfg->tap ? fp_mactab_new(64) : NULL);
    h->ev_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!h->conns || !h->touched || (cfg->tap && !atomic_load(&h->macs)) || h->ev_fd < 0) {
        snprintf(err, errlen, "out of memory or eventfd: %s", strerror(errno));
        fp_hub_free(h);
        return NULL;
    }
    for (int i = 0; i <= h->nworkers; i++) {
        h->w[i] = calloc(1, sizeof(hub_worker));
        if (!h->w[i] || hub_worker_init(h->w[i], h, i, i < h->nworkers) < 0) {
            snprintf(err, errlen, "cannot set up worker %d: %s", i, strerror(errno));
            fp_hub_free(h);
            return NULL;
        }
    }
    return h;
}

int fp_hub_attach(fp_hub *h, int worker, int kind, int fd) {
    if (worker < 0 || worker >= h->nworkers || fd < 0 || h->started)
        return -EINVAL;
    hub_worker *w = h->w[worker];
    if (kind == FP_FD_DEVICE) {
        if (w->dev_fd >= 0)
            return -EEXIST;
        w->dev_fd = fd;
        if (h->any_dev < 0)
            h->any_dev = fd;
        return 0;
    }
    if (kind != FP_FD_UDP && kind != FP_FD_UDPLITE)
        return -EINVAL;
    int dom = 0, type = 0;
    socklen_t dl = sizeof(dom), tl = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &dl) < 0 ||
        getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 || type != SOCK_DGRAM ||
        (dom != AF_INET && dom != AF_INET6))
        return -ENOTSOCK;
    int k = kind == FP_FD_UDPLITE, f = dom == AF_INET6;
    if (w->socks[k][f] >= 0)
        return -EEXIST;
    w->socks[k][f] = fd;
    if (h->any_sock[k][f] < 0)
        h->any_sock[k][f] = fd;
    return 0;
}

void fp_hub_free(fp_hub *h) {
    if (!h)
        return;
    atomic_store(&h->stopping, 1);
    for (int i = 0; i < h->nworkers; i++)
        if (h->w[i] && h->w[i]->wake_fd >= 0) {
            uint64_t one = 1;
            if (write(h->w[i]->wake_fd, &one, sizeof(one)) < 0) {
                /* the epoll timeout ends the worker anyway */
            }
        }
    for (int i = 0; i < h->nworkers; i++)
        if (h->w[i] && h->w[i]->started)
            pthread_join(h->w[i]->thread, NULL);
    if (h->started)
        hub_restore_fds(h);
    h->started = 0; /* from here on retire() frees at once */
    for (size_t i = 0; i < h->nretired; i++)
        h->retired[i].fn(h->retired[i].p);
    free(h->retired);
    if (h->conns) {
        for (size_t m = 0; m < HUB_MUXES; m++) {
            hub_conn *c = atomic_load(&h->conns[m]);
            if (c)
                conn_free(c);
        }
        free((void *)h->conns);
    }
    for (size_t i = 0; i < HUB_MAX_STREAMS; i++) {
        hub_stream *s = atomic_load(&h->streams[i]);
        if (s)
            hub_stream_free(s);
    }
    fp_lpm_free(atomic_load(&h->lpm));
    fp_mactab_free(atomic_load(&h->macs));
    free(atomic_load(&h->flood));
    for (int i = 0; i < h->slow_count; i++)
        free(h->slow[(h->slow_head + i) % HUB_SLOW_SLOTS].data);
    for (int i = 0; i <= h->nworkers; i++)
        if (h->w[i]) {
            hub_worker_free(h->w[i]);
            free(h->w[i]);
        }
    free(h->touched);
    if (h->ev_fd >= 0)
        close(h->ev_fd);
    pthread_mutex_destroy(&h->ctl_lock);
    pthread_mutex_destroy(&h->ev_lock);
    free(h);
}
