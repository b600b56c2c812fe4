"""cffi build script (API mode, out-of-line) for relay.fastpath._fastpath.

setup.py builds it as an optional extension: without a C compiler or OpenSSL headers the
package still installs and the tunnel runs on the Python data plane.
`python relay/fastpath/build.py` builds it in place for development.
"""

from __future__ import annotations

import os
from pathlib import Path

import cffi

HERE = Path(__file__).resolve().parent
SOURCES = ("satp.c", "replay.c", "offload.c", "engine.c", "rtp.c")
HEADERS = ("fastpath.h", "internal.h")
C_FLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-D_GNU_SOURCE", "-pthread",
           "-fvisibility=hidden", "-fno-strict-aliasing"]

# The public API of fastpath.h, as cffi needs it (no macros, no includes).
CDEF = """
typedef struct fp_suite { int cipher_key_len; int kd_key_len; int auth; int tag_len; } fp_suite;
typedef struct fp_satp fp_satp;
typedef struct fp_hdr { uint32_t seq; uint16_t sender_id; uint16_t mux; uint16_t payload_type; }
    fp_hdr;
fp_satp *fp_satp_new(const fp_suite *suite, const uint8_t *master_key, size_t master_key_len,
                     const uint8_t *master_salt, int role, char *err, size_t errlen);
void fp_satp_free(fp_satp *s);
size_t fp_satp_overhead(const fp_satp *s);
long fp_seal(fp_satp *s, uint32_t seq, uint16_t sender_id, uint16_t mux, uint16_t ptype,
             const uint8_t *payload, size_t len, uint8_t *out, size_t outcap);
long fp_open(fp_satp *s, const uint8_t *dgram, size_t len, uint8_t *out, size_t outcap,
             fp_hdr *hdr);
int fp_prf(fp_satp *s, uint32_t label, uint32_t seq, uint8_t *out, size_t length);

typedef struct fp_replay_params { uint32_t size; uint32_t restart_after; double restart_quiet;
    uint32_t restart_max_seq; uint32_t restart_gap; } fp_replay_params;
typedef struct fp_replay fp_replay;
fp_replay *fp_replay_new(const fp_replay_params *p);
void fp_replay_free(fp_replay *r);
int fp_replay_accept(fp_replay *r, uint16_t sender_id, uint32_t seq, double now);
int fp_replay_high(const fp_replay *r, uint16_t sender_id, uint32_t *high);
void fp_replay_advance(fp_replay *r, uint16_t sender_id, uint32_t high, double now);
size_t fp_replay_senders(const fp_replay *r, uint16_t *ids, uint32_t *highs, size_t max);

typedef struct fp_engine_config {
    int dev_fd; int dev_tap; int dev_vnet_hdr; int sock_fd; int sock_fd2;
    uint16_t sender_id; uint16_t mux; uint32_t first_seq; int max_payload; int roam; int gso;
    fp_replay_params replay;
    uint8_t remote[28]; uint32_t remote_len;
} fp_engine_config;
typedef struct fp_engine_stats {
    uint64_t tx_packets, tx_bytes;
    uint64_t tx_datagrams_batched;
    uint64_t tx_no_remote, tx_oversize, tx_error, tx_segmented;
    uint64_t rx_packets, rx_bytes;
    uint64_t rx_short, rx_auth, rx_replay, rx_too_old, rx_restart, rx_bad_mux, rx_bad_type;
    uint64_t rx_dev_error, rx_coalesced;
    uint64_t tx_syscalls, rx_syscalls;
    uint64_t slow_packets;
    uint32_t next_seq;
    uint32_t offloads;
} fp_engine_stats;
typedef struct fp_event { int kind; uint16_t sender_id; uint32_t seq; uint8_t addr[28];
    uint32_t addr_len; } fp_event;
typedef struct fp_engine fp_engine;
fp_engine *fp_engine_start(const fp_engine_config *cfg, const fp_suite *suite,
                           const uint8_t *master_key, size_t master_key_len,
                           const uint8_t *master_salt, int role, char *err, size_t errlen);
void fp_engine_stop(fp_engine *e);
void fp_engine_stats_get(fp_engine *e, fp_engine_stats *out);
int fp_engine_set_remote(fp_engine *e, const uint8_t *addr, uint32_t addr_len);
int fp_engine_event_fd(fp_engine *e);
int fp_engine_next_event(fp_engine *e, fp_event *ev);
long fp_engine_next_slow(fp_engine *e, uint8_t *buf, size_t cap);
int fp_engine_send(fp_engine *e, uint16_t ptype, const uint8_t *payload, size_t len);
void fp_engine_advance_seq(fp_engine *e, uint32_t seq);
typedef struct fp_rtp_counters { int id; uint64_t got, relayed, dropped, bytes_in, bytes_out;
    uint64_t last_ns; } fp_rtp_counters;
typedef struct fp_rtp fp_rtp;
fp_rtp *fp_rtp_start(int workers, char *err, size_t errlen);
void fp_rtp_stop(fp_rtp *r);
int fp_rtp_leg_add(fp_rtp *r, int fd);
int fp_rtp_leg_set(fp_rtp *r, int id, int out_fd, const uint8_t *dest, uint32_t dest_len,
                   const uint8_t *src, uint32_t src_len, int ask, int sticky,
                   const uint8_t *ask1, uint32_t ask1_len, const uint8_t *ask2,
                   uint32_t ask2_len);
int fp_rtp_leg_remove(fp_rtp *r, int id);
size_t fp_rtp_collect(fp_rtp *r, fp_rtp_counters *out, size_t max);
int fp_rtp_event_fd(fp_rtp *r);
int fp_rtp_next_event(fp_rtp *r, int *id, uint8_t *src, uint32_t *src_len);
uint64_t fp_rtp_overflow(fp_rtp *r);
long fp_offload_coalesce(int fd, int tcp, int uso, const uint8_t *buf, const uint32_t *lens,
                         size_t n);
size_t fp_engine_replay_senders(fp_engine *e, uint16_t *ids, uint32_t *highs, size_t max);
void fp_engine_replay_advance(fp_engine *e, uint16_t sender_id, uint32_t high);
"""


def _relative(path: Path) -> str:
    """setuptools wants sources relative to the project root (setup.py's directory)."""
    try:
        return os.path.relpath(path, Path.cwd())
    except ValueError:
        return str(path)


ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "relay.fastpath._fastpath",
    '#include "fastpath.h"',
    sources=[_relative(HERE / s) for s in SOURCES],
    depends=[_relative(HERE / h) for h in HEADERS],
    include_dirs=[_relative(HERE)],
    libraries=["crypto"],
    extra_compile_args=C_FLAGS,
    extra_link_args=["-pthread"],
)

if __name__ == "__main__":
    os.chdir(HERE.parent.parent)
    ffibuilder.compile(tmpdir="build/fastpath", verbose=True)
