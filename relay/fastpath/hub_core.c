/* The per-packet decisions of the server-mode data plane, rule for rule those of
 * relay/tunnel/dataplane.py (tests/unit/test_fastpath_hub_agrees.py feeds both the same
 * tables and packets): the clear header only finds the connection; nothing is learned before a
 * datagram authenticated and passed the replay window; the endpoint moves only on packets the
 * window calls fresh; routes (tun) or learned MACs (tap) pick the client a packet goes to.
 *
 * Outputs go to the worker's sinks (hub_io.c), which batch them, or capture them for tests.
 */
#include <string.h>

#include "hub.h"

static inline int accepted(int v) { return v <= FP_RESTART; }
static inline int may_roam(int v) {
    return v == FP_FRESH || v == FP_IN_WINDOW || v == FP_RESTART;
}

/* relay.tunnel.packet.ip_destination: (version, pointer) or 0. */
static int ip_dst(const uint8_t *p, size_t n, const uint8_t **dst) {
    if (n >= 20 && p[0] >> 4 == 4) {
        *dst = p + 16;
        return 4;
    }
    if (n >= 40 && p[0] >> 4 == 6) {
        *dst = p + 24;
        return 6;
    }
    return 0;
}

static uint16_t ptype_of_ip(const uint8_t *p, size_t n) {
    if (!n)
        return 0;
    return p[0] >> 4 == 4 ? FP_PT_IPV4 : p[0] >> 4 == 6 ? FP_PT_IPV6 : 0;
}

/* Would relay.tunnel.packet.fragment_ipv4(p, room) give fragments? */
static int fragmentable(const uint8_t *p, size_t n, size_t room) {
    if (n < 20 || p[0] >> 4 != 4)
        return 0;
    size_t ihl = (size_t)(p[0] & 15) * 4;
    if ((rd16(p + 6) & 0x4000) || ihl < 20 || n < ihl)
        return 0;
    return room > ihl && (room - ihl) / 8 * 8 > 0 && n > ihl;
}

int hub_seal_to(hub_worker *w, hub_conn *t, uint16_t ptype, const uint8_t *payload, size_t n,
                int slow_ok) {
    fp_hub *h = w->h;
    fp_remote to;
    hub_remote_load(t, &to);
    hub_touch(h, t); /* counters move whatever happens next */
    if (to.kind == FP_RK_NONE) {
        hub_nc(w, FP_NC_NO_REMOTE, 1);
        hub_cc(&t->txc[HUB_TX_NO_REMOTE], 1);
        return 0;
    }
    hub_keys *k = atomic_load_explicit(&t->keys, memory_order_acquire);
    size_t room = (size_t)h->cfg.max_datagram - k->overhead;
    if (n > room) {
        /* what the Python plane's _oversize does: frames drop, IPv4 without DF is
         * fragmented, the rest gets an ICMP error; the last two are left to Python */
        hub_nc(w, FP_NC_OVERSIZE, 1);
        hub_cc(&t->txc[HUB_TX_OVERSIZE], 1);
        if (ptype == FP_PT_ETHERNET || !slow_ok)
            return 0;
        hub_push_slow(w, t->mux, ptype, payload, n);
        return fragmentable(payload, n, room);
    }
    hub_tx *tx = hub_tx_of(h, k);
    if (!tx) {
        hub_nc(w, FP_NC_NO_MEMORY, 1);
        return 0;
    }
    uint32_t seq = atomic_fetch_add_explicit(&t->seq, 1, memory_order_relaxed);
    hub_cc(&t->txc[HUB_TX_PACKETS], 1);
    hub_cc(&t->txc[HUB_TX_BYTES], n);
    hub_nc(w, FP_NC_TX, 1);
    uint8_t *d = hub_out_room(w, &to, n + k->overhead);
    if (!d)
        return 1; /* counted by the sink (no transport for this remote): sealed, as Python */
    memcpy(d + FP_DATA_OFF, payload, n);
    pthread_mutex_lock(&tx->lock);
    size_t len = fp_seal_inplace(tx->satp, d, n, seq, h->cfg.sender_id, t->mux, ptype);
    pthread_mutex_unlock(&tx->lock);
    hub_out_commit(w, &to, d, len);
    return 1;
}

/* Broadcast, multicast and unknown unicast frames: every other client with a remote. */
static void flood(hub_worker *w, const hub_conn *except, const uint8_t *frame, size_t n) {
    fp_hub *h = w->h;
    const hub_flood *f = atomic_load_explicit(&h->flood, memory_order_acquire);
    for (size_t i = 0; f && i < f->n; i++) {
        hub_conn *c = hub_conn_at(h, f->mux[i]);
        if (!c || c == except ||
            !(atomic_load_explicit(&c->remote[0], memory_order_relaxed) & 0xffffffffu))
            continue;
        hub_seal_to(w, c, FP_PT_ETHERNET, frame, n, 1);
    }
}

static void learn(hub_worker *w, hub_conn *c, const uint8_t *src) {
    fp_hub *h = w->h;
    if (src[0] & 1 || fp_mactab_get(atomic_load_explicit(&h->macs, memory_order_acquire), src) ==
                          (int)c->mux)
        return;
    /* Python decides (it caps MACs per client); a client cycling through made-up MACs gets a
     * bounded number of requests per maintain period */
    if (!atomic_load_explicit(&c->learn_budget, memory_order_relaxed))
        return;
    atomic_fetch_sub_explicit(&c->learn_budget, 1, memory_order_relaxed);
    fp_hub_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.kind = FP_HEV_MAC;
    ev.mux = c->mux;
    ev.gen = c->gen;
    memcpy(ev.mac, src, 6);
    hub_push_event(h, &ev);
}

static void switch_from_client(hub_worker *w, hub_conn *c, const uint8_t *frame, size_t n) {
    fp_hub *h = w->h;
    learn(w, c, frame + 6);
    if (!h->cfg.tunneling) {
        hub_out_dev(w, frame, n);
        return;
    }
    int mux = frame[0] & 1 ? -1
                           : fp_mactab_get(atomic_load_explicit(&h->macs, memory_order_acquire),
                                           frame);
    if (!(frame[0] & 1) && !memcmp(frame, frame + 6, 6))
        mux = c->mux; /* to its own source: learned just now (Python applies it at once) */
    if (mux >= 0) {
        if (mux == c->mux)
            return; /* the client's own segment */
        hub_conn *t = hub_conn_at(h, (uint16_t)mux);
        if (t && hub_seal_to(w, t, FP_PT_ETHERNET, frame, n, 1))
            hub_nc(w, FP_NC_RELAYED, 1);
        return;
    }
    hub_out_dev(w, frame, n);
    flood(w, c, frame, n);
}

static void route_from_client(hub_worker *w, hub_conn *c, uint16_t ptype, const uint8_t *pkt,
                              size_t n) {
    fp_hub *h = w->h;
    const uint8_t *dst;
    int v;
    if (h->cfg.tunneling && (v = ip_dst(pkt, n, &dst))) {
        int mux = fp_lpm_lookup(atomic_load_explicit(&h->lpm, memory_order_acquire), v, dst);
        if (mux >= 0 && mux != c->mux) {
            hub_conn *t = hub_conn_at(h, (uint16_t)mux);
            if (t) {
                if (hub_seal_to(w, t, ptype, pkt, n, 1))
                    hub_nc(w, FP_NC_RELAYED, 1);
                return;
            }
        }
    }
    hub_out_dev(w, pkt, n);
}

void hub_from_net(hub_worker *w, uint8_t *d, size_t len, const fp_remote *from) {
    fp_hub *h = w->h;
    if (len < FP_HEADER_LEN) {
        hub_nc(w, FP_NC_SHORT, 1);
        return;
    }
    hub_conn *c = hub_conn_at(h, rd16(d + 6));
    if (!c) {
        hub_nc(w, FP_NC_UNKNOWN_MUX, 1);
        return;
    }
    hub_touch(h, c); /* counters move whatever happens next */
    hub_keys *k = atomic_load_explicit(&c->keys, memory_order_acquire);
    hub_rx *rx = hub_rx_of(h, k);
    if (!rx) {
        hub_nc(w, FP_NC_NO_MEMORY, 1);
        return;
    }
    fp_hdr hdr;
    pthread_mutex_lock(&rx->lock);
    long n = fp_open_inplace(rx->satp, d, len, &hdr);
    int v = n < 0 ? FP_TOO_OLD : fp_replay_accept(rx->replay, hdr.sender_id, hdr.seq, w->now);
    pthread_mutex_unlock(&rx->lock);
    if (n < 0) {
        int shrt = n == FP_ERR_SHORT;
        hub_nc(w, shrt ? FP_NC_SHORT : FP_NC_AUTH, 1);
        hub_cc(&c->rxc[shrt ? HUB_RX_SHORT : HUB_RX_AUTH], 1);
        return;
    }
    if (!accepted(v)) {
        int rep = v == FP_REPLAY;
        hub_nc(w, rep ? FP_NC_REPLAY : FP_NC_TOO_OLD, 1);
        hub_cc(&c->rxc[rep ? HUB_RX_REPLAY : HUB_RX_TOO_OLD], 1);
        return;
    }
    if (may_roam(v)) {
        fp_remote cur;
        hub_remote_load(c, &cur);
        if (!hub_remote_equal(&cur, from)) {
            hub_remote_store(c, from);
            if (cur.kind == FP_RK_NONE && h->cfg.tap)
                atomic_store(&h->flood_dirty, 1);
            fp_hub_event ev;
            memset(&ev, 0, sizeof(ev));
            ev.kind = FP_HEV_REMOTE;
            ev.mux = c->mux;
            ev.gen = c->gen;
            ev.sender_id = hdr.sender_id;
            ev.seq = hdr.seq;
            ev.remote = *from;
            hub_push_event(h, &ev);
        }
    }
    if (v == FP_RESTART) {
        hub_cc(&c->rxc[HUB_RX_RESTARTS], 1);
        hub_nc(w, FP_NC_RESTART, 1);
        fp_hub_event ev;
        memset(&ev, 0, sizeof(ev));
        ev.kind = FP_HEV_RESTART;
        ev.mux = c->mux;
        ev.gen = c->gen;
        ev.sender_id = hdr.sender_id;
        ev.seq = hdr.seq;
        hub_push_event(h, &ev);
    }
    const uint8_t *pl = d + FP_DATA_OFF;
    size_t pn = (size_t)n;
    uint16_t pt = hdr.payload_type;
    int ok = h->cfg.tap ? pt == FP_PT_ETHERNET && pn >= 14
                        : (pt == FP_PT_IPV4 || pt == FP_PT_IPV6) && ptype_of_ip(pl, pn) == pt;
    if (!ok) {
        hub_nc(w, FP_NC_PAYLOAD_TYPE, 1);
        hub_cc(&c->rxc[HUB_RX_PAYLOAD_TYPE], 1);
        return;
    }
    hub_cc(&c->rxc[HUB_RX_PACKETS], 1);
    hub_cc(&c->rxc[HUB_RX_BYTES], pn);
    hub_nc(w, FP_NC_RX, 1);
    if (!h->cfg.routing)
        hub_out_dev(w, pl, pn);
    else if (h->cfg.tap)
        switch_from_client(w, c, pl, pn);
    else
        route_from_client(w, c, pt, pl, pn);
}

void hub_from_dev(hub_worker *w, uint8_t *pkt, size_t len) {
    fp_hub *h = w->h;
    uint16_t ptype;
    if (h->cfg.tap) {
        if (len < 14) {
            hub_nc(w, FP_NC_MALFORMED, 1);
            return;
        }
        ptype = FP_PT_ETHERNET;
    } else if (!(ptype = ptype_of_ip(pkt, len))) {
        hub_nc(w, FP_NC_MALFORMED, 1);
        return;
    }
    int mux;
    if (!h->cfg.routing) {
        mux = h->cfg.default_mux;
    } else if (h->cfg.tap) {
        mux = pkt[0] & 1 ? -1
                         : fp_mactab_get(atomic_load_explicit(&h->macs, memory_order_acquire),
                                         pkt);
        if (mux < 0) {
            flood(w, NULL, pkt, len);
            return;
        }
    } else {
        const uint8_t *dst;
        int v = ip_dst(pkt, len, &dst);
        mux = v ? fp_lpm_lookup(atomic_load_explicit(&h->lpm, memory_order_acquire), v, dst)
                : -1;
        if (mux < 0) {
            hub_nc(w, FP_NC_NO_ROUTE, 1);
            return;
        }
    }
    hub_conn *c = hub_conn_at(h, (uint16_t)mux);
    if (!c) {
        hub_nc(w, FP_NC_NO_CONNECTION, 1);
        return;
    }
    hub_seal_to(w, c, ptype, pkt, len, 1);
}
