// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// portlab trace, BPF route: the connect() state machine of src/aggregate.rs, run in the kernel
// on the same four tracepoints (inet_sock_set_state as tp_btf when it loads), counting into
// maps that user space reads (src/bpf.rs). Nothing is sent to user space per event.
//
// Built by build.rs with `clang -target bpf -mcpu=v3 -O2 -g`; no vmlinux.h, no libbpf headers:
// the tracepoint records are declared from /sys/kernel/tracing/events/*/*/format (stable since
// Linux 4.16; src/bpf.rs checks the running kernel's offsets before loading), the helpers by
// their ids in include/uapi/linux/bpf.h, and the kernel structs read for the --netns filter and
// by the tp_btf program with preserve_access_index (CO-RE: the loader fixes the offsets from the
// kernel's BTF).
//
// Kernel sequence (measured on Linux 6.18, docs/trace.md):
//   connect() -> tcp_v4_connect(): CLOSE -> SYN_SENT on the caller's thread, sport 0
//   no free port: SYN_SENT -> CLOSE with sport 0 (net/ipv4/inet_hashtables.c), then
//                 sys_exit_connect = -EADDRNOTAVAIL; the gap is the failed port search
//   SYN-ACK:      SYN_SENT -> ESTABLISHED
//   RST/timeout:  SYN_SENT -> CLOSE with a port, then inet_sk_error_report (same 4-tuple)
//   active close: FIN_WAIT1/FIN_WAIT2/CLOSING -> CLOSE (tcp_time_wait(): a TIME_WAIT entry)
//   passive:      CLOSE_WAIT/LAST_ACK -> CLOSE

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef int __s32;
typedef long long __s64;

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name
#define INLINE static __attribute__((always_inline)) inline

// include/uapi/linux/bpf.h
#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_LRU_HASH 9
#define BPF_ANY 0
#define BPF_NOEXIST 1

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value,
                                   __u64 flags) = (void *)2;
static long (*bpf_map_delete_elem)(void *map, const void *key) = (void *)3;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)5;
static __u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;
static long (*bpf_get_current_comm)(void *buf, __u32 size) = (void *)16;
static __u64 (*bpf_get_current_task)(void) = (void *)35;
static long (*bpf_probe_read_kernel)(void *dst, __u32 size, const void *src) = (void *)113;
static __u64 (*bpf_get_current_ancestor_cgroup_id)(int level) = (void *)123;

// include/net/tcp_states.h
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_FIN_WAIT1 4
#define TCP_FIN_WAIT2 5
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LAST_ACK 9
#define TCP_CLOSING 11
#define IPPROTO_TCP 6

#define E2BIG 7
#define EINTR 4
#define EAGAIN 11
#define EADDRNOTAVAIL 99
#define EALREADY 114
#define EINPROGRESS 115
#define ERESTARTSYS 512

// The tracepoint records (common header: 8 bytes).
struct set_state_args {
    __u64 common;
    const void *skaddr;
    int oldstate;
    int newstate;
    __u16 sport;
    __u16 dport;
    __u16 family;
    __u16 protocol;
    __u8 saddr[4];
    __u8 daddr[4];
    __u8 saddr_v6[16];
    __u8 daddr_v6[16];
};

struct error_report_args {
    __u64 common;
    int error;
    __u16 sport;
    __u16 dport;
    __u16 family;
    __u16 protocol;
    __u8 saddr[4];
    __u8 daddr[4];
    __u8 saddr_v6[16];
    __u8 daddr_v6[16];
};

struct sys_exit_args {
    __u64 common;
    __s32 nr;
    __s32 pad;
    long ret;
};

// Read only for the --netns filter: current->nsproxy->net_ns->ns.inum.
struct ns_common {
    unsigned int inum;
} __attribute__((preserve_access_index));
struct net {
    struct ns_common ns;
} __attribute__((preserve_access_index));
struct nsproxy {
    struct net *net_ns;
} __attribute__((preserve_access_index));
struct task_struct {
    struct nsproxy *nsproxy;
} __attribute__((preserve_access_index));

// Read by the tp_btf program (CO-RE: the loader fixes the offsets from the kernel's BTF; the
// nesting of anonymous unions mirrors include/net/sock.h so the access paths match).
struct in6_addr {
    __u8 u6_addr8[16];
};
struct sock_common {
    union {
        struct {
            __u32 skc_daddr;
            __u32 skc_rcv_saddr;
        };
    };
    union {
        struct {
            __u16 skc_dport;
            __u16 skc_num;
        };
    };
    unsigned short skc_family;
    struct in6_addr skc_v6_daddr;
    struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));
struct sock {
    struct sock_common __sk_common;
    __u16 sk_protocol;
    __u32 sk_max_ack_backlog;
} __attribute__((preserve_access_index));

// The two fields the tracepoint takes from struct inet_sock (beyond struct sock, so read with
// bpf_probe_read_kernel): tcp_set_state(CLOSE) zeroes inet_num (inet_put_port()) before the
// tracepoint fires, but not inet_sport.
struct inet_sock {
    __u32 inet_saddr;
    __u16 inet_sport;
} __attribute__((preserve_access_index));

#define AF_INET 2

// ---- maps and constants (layouts mirrored in src/bpf.rs) ----

// What to count: a read-only global (.rodata) that user space sets when it loads the object
// (aya EbpfLoader::override_global) and the kernel freezes, so the verifier reads every field as
// a constant and prunes the filters that are off: no map lookup per event for the config.
struct config {
    __u32 tgid;         // 0: every process
    __u16 dport;        // 0: every destination
    __u16 match_daddr;  // 1: only daddr
    __u8 daddr[16];     // IPv6 or v4-mapped IPv6, as the tracepoint's daddr_v6
    __u64 cgroup_id;    // 0: every cgroup; else this cgroup v2 or below
    __u32 cgroup_level; // depth of cgroup_id below the root
    __u32 netns;        // 0: every network namespace; else this one's inode
    __u32 syscalls;     // 1: the two syscall tracepoints are attached
    __u32 pad;
};

volatile const struct config cfg = {};

struct flow_key {
    __u32 tgid;
    __u16 dport;
    __u16 pad;
    __u8 daddr[16];
} __attribute__((aligned(8)));

#define BUCKETS 15
// in_progress and open are not kept here (two atomics fewer per connection): user space
// derives them, in_progress = attempts - successes - failures - abandoned and
// open = successes - closed_first - closed_by_peer - closed_other.
struct flow {
    __u64 attempts;
    __u64 successes;
    __u64 abandoned;
    __u64 closed_other; // left ESTABLISHED for CLOSE without an orderly close (reset)
    __u64 pad;
    __u64 closed_first;
    __u64 closed_by_peer;
    __u64 time_wait_entered;
    __u64 first_failure_ns;
    __u64 search_count;
    __u64 search_sum_ns;
    __u64 search_max_ns;
    __u64 search_buckets[BUCKETS];
    char comm[16];
};

// Failures are keyed by the flow's slot in `counters` (8 bytes to hash, not 28).
struct errno_key {
    __u32 slot;
    __s32 err;
};

#define PHASE_CONNECTING 1
#define PHASE_ESTABLISHED 2
struct sock_state {
    __u32 syn_sent_ns; // the low 32 bits: a port search takes far less than 4.29 s
    __u16 slot;        // at most MAX_FLOWS
    __u16 phase;
};

struct tuple {
    __u16 sport;
    __u16 dport;
    __u8 saddr[16];
    __u8 daddr[16];
};

// A socket that left SYN_SENT for CLOSE and waits for its errno (error report or connect()
// return). User space counts the ones that wait longer than 50 ms (src/bpf.rs).
struct failed {
    __u64 closed_ns;
    __u32 slot;
    __u32 no_port;
    struct tuple tuple;
    __u32 pad;
};

struct call {
    __u64 sk;
};

struct socketless_key {
    __u32 tgid;
    __s32 err;
};

struct stats {
    __u64 events;
    __u64 lost;
    __u64 flows_overflowed;
};

#define MAX_FLOWS 4096

// (tgid, destination) -> slot in `counters`; user space inserts the overflow row (tgid 0,
// :: port 0 -> slot 0) first, so one more than MAX_FLOWS.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, MAX_FLOWS + 1);
    __type(key, struct flow_key);
    __type(value, __u32);
} flows SEC(".maps");

// The counters of each flow, by slot (0: the overflow row). An array: the verifier inlines its
// lookups, so the transitions after SYN_SENT reach their counters without hashing a key.
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, MAX_FLOWS + 1);
    __type(key, __u32);
    __type(value, struct flow);
} counters SEC(".maps");

// The last slot handed out (slots are 1..MAX_FLOWS).
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u32);
} next_slot SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 32768);
    __type(key, struct errno_key);
    __type(value, __u64);
} failures SEC(".maps");

// The client sockets being followed, by socket address: an open-addressed table in an array
// (the verifier inlines array lookups: no hash function call, no bucket lock, no free list, as a
// hash map's update and delete take). A socket lives at one of the PROBES entries from
// sock_hash(sk); sk 0 marks a free entry. Claimed with a compare-and-swap, so two CPUs never
// take one entry; every later change of an entry is made under the socket's own lock (the
// kernel calls the tracepoint with it held), so by one CPU at a time. Lookups read all PROBES
// entries (a freed entry between two used ones does not end the search). 131,072 entries of
// 16 bytes (2 MiB: few pages, so few TLB misses): with 30,000 sockets followed at once a full
// window of 8 is rare; one that is full counts into lost_events and the socket stays
// in_progress.
#define SOCK_BITS 17
#define SOCK_ENTRIES (1 << SOCK_BITS)
#define PROBES 8
struct sock_entry {
    __u64 sk;
    struct sock_state s;
};
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, SOCK_ENTRIES);
    __type(key, __u32);
    __type(value, struct sock_entry);
} socks SEC(".maps");

// The last flow this CPU counted a connect() for, so a run of connects from one process to
// one destination finds its slot without hashing the 24-byte key (flows are never removed,
// so an entry stays right).
struct flow_cache {
    struct flow_key key;
    __u64 slot; // +1; 0: empty
};
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct flow_cache);
} flow_cache SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384);
    __type(key, __u64);
    __type(value, struct failed);
} failed SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384);
    __type(key, struct tuple);
    __type(value, __u64);
} by_tuple SEC(".maps");

// Thread id -> the socket its current connect() moved to SYN_SENT (0: none). Entries are
// written in place, never deleted per call (an update or delete takes a bucket lock; a lookup
// does not); an LRU hash, so threads that exited make room.
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 16384);
    __type(key, __u32);
    __type(value, struct call);
} calls SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, struct socketless_key);
    __type(value, __u64);
} socketless SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct stats);
} stats SEC(".maps");

// Upper bounds of the failed-port-search buckets, ns (src/aggregate.rs PORT_SEARCH_BOUNDS_NS).
static const __u64 bounds_ns[BUCKETS - 1] = {
    1000,    2500,    5000,    10000,   25000,    50000,    100000,
    250000,  500000,  1000000, 2500000, 5000000,  10000000, 50000000,
};

// A key 0 on the stack (a global would need a .rodata map).
#define ZERO (*(&(__u32){0}))

INLINE struct stats *stat(void) { return bpf_map_lookup_elem(&stats, &ZERO); }

INLINE void count_event(void) {
    struct stats *s = stat();
    if (s)
        s->events++;
}

INLINE void count_lost(void) {
    struct stats *s = stat();
    if (s)
        s->lost++;
}

INLINE void copy16(__u8 *dst, const __u8 *src) {
    __builtin_memcpy(dst, src, 16);
}

// 16 bytes equal? (__builtin_memcmp would be a call to memcmp, which BPF has not.)
INLINE int same16(const volatile __u8 *a, const __u8 *b) {
    int diff = 0;
#pragma unroll
    for (int i = 0; i < 16; i++)
        diff |= a[i] ^ b[i];
    return diff == 0;
}

// Whether the current task passes the --pid, --cgroup and --netns filters (constants: the
// verifier drops the tests of the filters that are off).
INLINE int task_selected(__u32 tgid) {
    if (cfg.tgid && cfg.tgid != tgid)
        return 0;
    if (cfg.cgroup_id && bpf_get_current_ancestor_cgroup_id(cfg.cgroup_level) != cfg.cgroup_id)
        return 0;
    if (cfg.netns) {
        struct task_struct *t = (void *)bpf_get_current_task();
        struct nsproxy *nsp = 0;
        struct net *net = 0;
        unsigned int inum = 0;
        bpf_probe_read_kernel(&nsp, sizeof(nsp), &t->nsproxy);
        if (!nsp)
            return 0;
        bpf_probe_read_kernel(&net, sizeof(net), &nsp->net_ns);
        if (!net)
            return 0;
        bpf_probe_read_kernel(&inum, sizeof(inum), &net->ns.inum);
        if (inum != cfg.netns)
            return 0;
    }
    return 1;
}

// Adds 1 to the u64 counter at `key` in the hash `map`, creating it at 1. When another CPU
// created it first the add goes to its entry; a full map counts into lost_events.
INLINE void count_in(void *map, const void *key) {
    __u64 *n = bpf_map_lookup_elem(map, key);
    if (!n) {
        __u64 one = 1;
        if (bpf_map_update_elem(map, key, &one, BPF_NOEXIST) == 0)
            return;
        n = bpf_map_lookup_elem(map, key);
        if (!n) {
            count_lost();
            return;
        }
    }
    __sync_fetch_and_add(n, 1);
}

INLINE struct flow *counters_of(__u32 slot) { return bpf_map_lookup_elem(&counters, &slot); }

INLINE void fail(struct flow *f, __u32 slot, __s32 err, __u64 now) {
    struct errno_key ek = {.slot = slot, .err = err};
    count_in(&failures, &ek);
    if (!f->first_failure_ns)
        f->first_failure_ns = now;
}

INLINE void record_search(struct flow *f, __u64 ns) {
    __u32 i = 0;
#pragma unroll
    for (int b = 0; b < BUCKETS - 1; b++) {
        if (ns > bounds_ns[b])
            i = b + 1;
    }
    if (i < BUCKETS)
        __sync_fetch_and_add(&f->search_buckets[i], 1);
    __sync_fetch_and_add(&f->search_count, 1);
    __sync_fetch_and_add(&f->search_sum_ns, ns);
    if (ns > f->search_max_ns)
        f->search_max_ns = ns;
}

// Counts a socket that waited in `failed` with the errno that came (0: none).
INLINE void finish_failed(__u64 sk, struct failed *w, __s32 err) {
    struct failed copy = *w;
    if (bpf_map_delete_elem(&failed, &sk) != 0)
        return; // user space or another CPU counted it
    if (!copy.no_port)
        bpf_map_delete_elem(&by_tuple, &copy.tuple);
    struct flow *f = counters_of(copy.slot);
    if (!f)
        return;
    if (!err && copy.no_port)
        err = EADDRNOTAVAIL;
    if (err)
        fail(f, copy.slot, err, bpf_ktime_get_ns());
    else
        __sync_fetch_and_add(&f->abandoned, 1);
}

// The slot of (tgid, destination) in `counters`, creating the flow on its first connect;
// slot 0 (the overflow row) once MAX_FLOWS flows exist. -1: not counted (lost).
INLINE long flow_slot(const struct flow_key *key) {
    __u32 *found = bpf_map_lookup_elem(&flows, key);
    if (found)
        return *found;
    __u32 *next = bpf_map_lookup_elem(&next_slot, &ZERO);
    if (!next)
        return -1;
    __u32 slot = __sync_fetch_and_add(next, 1) + 1;
    long err = -E2BIG;
    if (slot <= MAX_FLOWS) {
        struct flow *f = counters_of(slot);
        if (!f)
            return -1;
        bpf_get_current_comm(f->comm, sizeof(f->comm));
        err = bpf_map_update_elem(&flows, key, &slot, BPF_NOEXIST);
        if (err == 0)
            return slot;
    }
    if (err == -E2BIG) {
        struct stats *s = stat();
        if (s)
            s->flows_overflowed++;
        return 0;
    }
    // Another CPU created this flow first (its slot is the one; ours stays unused).
    found = bpf_map_lookup_elem(&flows, key);
    return found ? *found : -1;
}

// The fields of an inet_sock_set_state hit, for both programs: `btf` is a constant after
// inlining, 0 for the classic tracepoint (ctx is its record) and 1 for tp_btf (ctx[0] is the
// struct sock *, read as the tracepoint's TP_STORE_ADDRS does: include/trace/events/sock.h).
INLINE __u16 ev_dport(const void *ctx, int btf) {
    if (!btf)
        return ((const struct set_state_args *)ctx)->dport;
    const struct sock *sk = (const struct sock *)((const __u64 *)ctx)[0];
    return __builtin_bswap16(sk->__sk_common.skc_dport);
}

INLINE __u16 ev_sport(const void *ctx, int btf) {
    if (!btf)
        return ((const struct set_state_args *)ctx)->sport;
    const struct inet_sock *inet = (const struct inet_sock *)((const __u64 *)ctx)[0];
    __u16 port = 0;
    bpf_probe_read_kernel(&port, sizeof(port), &inet->inet_sport);
    return __builtin_bswap16(port);
}

// flow_slot() behind this CPU's one-entry cache.
INLINE long cached_flow_slot(const struct flow_key *key) {
    struct flow_cache *c = bpf_map_lookup_elem(&flow_cache, &ZERO);
    if (c && c->slot) {
        const __u64 *a = (const __u64 *)&c->key, *b = (const __u64 *)key;
        if (a[0] == b[0] && a[1] == b[1] && a[2] == b[2])
            return (long)c->slot - 1;
    }
    long slot = flow_slot(key);
    if (c && slot >= 0) {
        c->key = *key;
        c->slot = (__u64)slot + 1;
    }
    return slot;
}

// 1 once a socket that had listened (sk_max_ack_backlog set) was seen at SYN_SENT: from then
// on the tp_btf program no longer takes a nonzero backlog at CLOSE to mean a listener's child.
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u32);
} listened_connects SEC(".maps");

// A per-CPU word that turns the tp_btf program's trusted socket pointer into a plain number
// (the verifier allows no arithmetic on the pointer, as sock_hash needs; a value read back
// from a map is a number).
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} scratch SEC(".maps");

// The listen backlog of the tp_btf hit's socket: nonzero for a listener and its children.
INLINE __u32 ev_backlog(const void *ctx) {
    return ((const struct sock *)((const __u64 *)ctx)[0])->sk_max_ack_backlog;
}

INLINE __u32 *listened_connects_flag(void) {
    return bpf_map_lookup_elem(&listened_connects, &ZERO);
}

INLINE __u64 as_number(__u64 v) {
    __u64 *p = bpf_map_lookup_elem(&scratch, &ZERO);
    if (!p)
        return 0;
    *p = v;
    return *(volatile __u64 *)p;
}

// Socket addresses are slab objects (low bits alike): a multiplicative hash spreads them.
INLINE __u32 sock_hash(__u64 sk) { return (__u32)((sk * 0x9E3779B97F4A7C15ULL) >> (64 - SOCK_BITS)); }

INLINE struct sock_entry *sock_entry_at(__u32 h, int i) {
    __u32 index = (h + i) & (SOCK_ENTRIES - 1);
    return bpf_map_lookup_elem(&socks, &index);
}

// The followed socket's entry, NULL when it is not followed.
INLINE struct sock_entry *sock_find(__u64 sk) {
    if (!sk)
        return 0;
    __u32 h = sock_hash(sk);
#pragma unroll
    for (int i = 0; i < PROBES; i++) {
        struct sock_entry *e = sock_entry_at(h, i);
        if (e && e->sk == sk)
            return e;
    }
    return 0;
}

// Starts following the socket with `init` (its entry if it has one, else a free one); 0 on
// success, -1 when every entry of its window is taken.
INLINE long sock_follow(__u64 sk, const struct sock_state *init) {
    if (!sk)
        return -1;
    __u32 h = sock_hash(sk);
#pragma unroll
    for (int i = 0; i < PROBES; i++) {
        struct sock_entry *e = sock_entry_at(h, i);
        if (!e)
            continue;
        if (e->sk == sk || (e->sk == 0 && __sync_val_compare_and_swap(&e->sk, 0, sk) == 0)) {
            e->s = *init;
            return 0;
        }
    }
    return -1;
}

// Stops following it: the entry is free again. 1 when this call freed it; 0 when another CPU
// did first (only sys_exit_connect frees an entry without the socket's lock: with the syscall
// programs the free is a compare-and-swap, else a store).
INLINE int sock_forget(struct sock_entry *e, __u64 sk) {
    if (!cfg.syscalls) {
        e->sk = 0;
        return 1;
    }
    return __sync_val_compare_and_swap(&e->sk, sk, 0) == sk;
}

INLINE void v4_mapped(__u8 *out, __u32 be_addr) {
    __builtin_memset(out, 0, 10);
    out[10] = 0xff;
    out[11] = 0xff;
    __builtin_memcpy(out + 12, &be_addr, 4);
}

INLINE void ev_daddr(const void *ctx, int btf, __u8 *out) {
    if (!btf) {
        copy16(out, ((const struct set_state_args *)ctx)->daddr_v6);
        return;
    }
    const struct sock *sk = (const struct sock *)((const __u64 *)ctx)[0];
    if (sk->__sk_common.skc_family == AF_INET)
        v4_mapped(out, sk->__sk_common.skc_daddr);
    else
        bpf_probe_read_kernel(out, 16, &sk->__sk_common.skc_v6_daddr);
}

INLINE void ev_saddr(const void *ctx, int btf, __u8 *out) {
    if (!btf) {
        copy16(out, ((const struct set_state_args *)ctx)->saddr_v6);
        return;
    }
    const struct sock *sk = (const struct sock *)((const __u64 *)ctx)[0];
    if (sk->__sk_common.skc_family == AF_INET) {
        const struct inet_sock *inet = (const struct inet_sock *)((const __u64 *)ctx)[0];
        __u32 addr = 0;
        bpf_probe_read_kernel(&addr, sizeof(addr), &inet->inet_saddr);
        v4_mapped(out, addr);
    } else
        bpf_probe_read_kernel(out, 16, &sk->__sk_common.skc_v6_rcv_saddr);
}

INLINE void syn_sent(const void *ctx, int btf, __u64 sk) {
    // No lookup of what this socket address held before: a TCP socket always passes through
    // CLOSE (traced, which deletes its entry) before its memory is reused; a socket still
    // waiting in `failed` is settled when the next failure finds it there (below).
    struct flow_key key = {};
    ev_daddr(ctx, btf, key.daddr);
    if (cfg.match_daddr && !same16(cfg.daddr, key.daddr))
        return;
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    __u32 tgid = pid_tgid >> 32;
    __u32 tid = (__u32)pid_tgid;
    if (!task_selected(tgid))
        return;
    count_event();

    if (btf && ev_backlog(ctx)) {
        __u32 *seen = listened_connects_flag();
        if (seen && !*seen)
            *seen = 1;
    }
    key.tgid = tgid;
    key.dport = ev_dport(ctx, btf);
    long slot = cached_flow_slot(&key);
    struct flow *f = slot >= 0 ? counters_of((__u32)slot) : 0;
    if (!f) {
        count_lost();
        return;
    }
    __sync_fetch_and_add(&f->attempts, 1);
    struct sock_state s = {};
    s.syn_sent_ns = (__u32)bpf_ktime_get_ns();
    s.slot = (__u16)slot;
    s.phase = PHASE_CONNECTING;
    if (sock_follow(sk, &s) != 0)
        count_lost(); // its outcome will not be seen: it stays in_progress
    if (cfg.syscalls) {
        // Pairs this socket with the connect() return on this thread (sys_exit_connect),
        // in place when the thread has an entry already.
        struct call *call = bpf_map_lookup_elem(&calls, &tid);
        if (call) {
            call->sk = sk;
        } else {
            struct call fresh = {.sk = sk};
            if (bpf_map_update_elem(&calls, &tid, &fresh, BPF_ANY) != 0)
                count_lost();
        }
    }
}

// The connect() return this SYN_SENT socket's failure can wait for: whether this thread is
// inside connect() on it (syscall tracepoints only).
INLINE int in_connect_on(__u64 sk) {
    if (!cfg.syscalls)
        return 0;
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    struct call *call = bpf_map_lookup_elem(&calls, &tid);
    return call && call->sk == sk;
}

INLINE void left_syn_sent(const void *ctx, int btf, __u64 sk, struct sock_entry *e, int new) {
    struct sock_state *s = &e->s;
    struct flow *f = counters_of(s->slot);
    if (!f)
        return;
    if (new == TCP_ESTABLISHED) {
        __sync_fetch_and_add(&f->successes, 1);
        s->phase = PHASE_ESTABLISHED;
        return;
    }
    if (new != TCP_CLOSE)
        return;
    __u64 now = bpf_ktime_get_ns();
    struct failed w = {};
    w.slot = s->slot;
    w.closed_ns = now;
    __u16 sport = ev_sport(ctx, btf);
    w.no_port = sport == 0;
    if (w.no_port) {
        // __inet_hash_connect() found no free port: the failed port search.
        record_search(f, (__u32)((__u32)now - s->syn_sent_ns));
    } else {
        w.tuple.sport = sport;
        w.tuple.dport = ev_dport(ctx, btf);
        ev_saddr(ctx, btf, w.tuple.saddr);
        ev_daddr(ctx, btf, w.tuple.daddr);
    }
    if (!sock_forget(e, sk))
        return;
    if (w.no_port && !in_connect_on(sk)) {
        // No connect() return to wait for (no syscall tracepoints, or not in the call).
        fail(f, w.slot, EADDRNOTAVAIL, now);
        return;
    }
    long err = bpf_map_update_elem(&failed, &sk, &w, BPF_NOEXIST);
    if (err != 0) {
        // An earlier failure of this socket address still waits for its errno (closed
        // while connecting, memory reused within 50 ms): it got none, count it now.
        struct failed *old = bpf_map_lookup_elem(&failed, &sk);
        if (old)
            finish_failed(sk, old, 0);
        err = bpf_map_update_elem(&failed, &sk, &w, BPF_NOEXIST);
    }
    if (err != 0) {
        count_lost();
        return;
    }
    if (!w.no_port && bpf_map_update_elem(&by_tuple, &w.tuple, &sk, BPF_ANY) != 0)
        count_lost();
}

// The state machine of one inet_sock_set_state hit, for both programs (see ev_dport).
INLINE int set_state(const void *ctx, int btf, __u64 sk, int old, int new) {
    // Every test before the first map operation is on the hit itself: the transitions that
    // cannot matter (a listener's, SYN_RECV, the steps between ESTABLISHED and the last CLOSE)
    // return here. The server side of a connection still costs one missed lookup at its CLOSE.
    if (cfg.dport && cfg.dport != ev_dport(ctx, btf))
        return 0;
    if (new == TCP_SYN_SENT) {
        if (old == TCP_CLOSE)
            syn_sent(ctx, btf, btf ? as_number(sk) : sk);
        return 0;
    }
    if (old == TCP_SYN_SENT) {
        if (new != TCP_ESTABLISHED && new != TCP_CLOSE)
            return 0;
    } else if (new != TCP_CLOSE || !(old == TCP_ESTABLISHED || old == TCP_FIN_WAIT1 ||
                                     old == TCP_FIN_WAIT2 || old == TCP_CLOSING ||
                                     old == TCP_CLOSE_WAIT || old == TCP_LAST_ACK)) {
        return 0;
    }
    if (btf && new == TCP_CLOSE && old != TCP_SYN_SENT && ev_backlog(ctx)) {
        // A listener's child (sk_clone_lock() copies the listener's sk_max_ack_backlog, which
        // a socket that never listened has 0: net/core/sock.c): not a connect()ed socket,
        // unless one that had listened connected since. Saves the table's cold miss on every
        // server-side socket of the host.
        __u32 *seen = listened_connects_flag();
        if (seen && !*seen)
            return 0;
    }
    if (btf)
        sk = as_number(sk);
    struct sock_entry *e = sock_find(sk);
    if (!e)
        return 0;
    struct sock_state *s = &e->s;
    count_event();
    if (s->phase == PHASE_CONNECTING) {
        if (old == TCP_SYN_SENT)
            left_syn_sent(ctx, btf, sk, e, new);
        return 0;
    }
    if (old == TCP_SYN_SENT)
        return 0;
    // Established: who closed first is read from the state it leaves for CLOSE.
    struct flow *f = counters_of(s->slot);
    if (!sock_forget(e, sk) || !f)
        return 0;
    if (old == TCP_FIN_WAIT1 || old == TCP_FIN_WAIT2 || old == TCP_CLOSING) {
        __sync_fetch_and_add(&f->closed_first, 1);
        __sync_fetch_and_add(&f->time_wait_entered, 1);
    } else if (old == TCP_CLOSE_WAIT || old == TCP_LAST_ACK) {
        __sync_fetch_and_add(&f->closed_by_peer, 1);
    } else {
        __sync_fetch_and_add(&f->closed_other, 1);
    }
    return 0;
}

// What a classic tracepoint program returns: 0 would make the kernel drop the hit for every
// perf_event_open user of the same tracepoint on the host (perf_trace_run_bpf_submit(),
// kernel/events/core.c), among them another portlab trace on the perf route, or perf record.
#define PASS_ON 1

// The classic tracepoint: the kernel builds the record (perf_trace_inet_sock_set_state)
// before the program runs. The fallback when tp_btf does not load.
SEC("tracepoint/sock/inet_sock_set_state")
int inet_sock_set_state(struct set_state_args *ctx) {
    if (ctx->protocol == IPPROTO_TCP)
        set_state(ctx, 0, (__u64)ctx->skaddr, ctx->oldstate, ctx->newstate);
    return PASS_ON;
}

// The same hook as a BTF raw tracepoint: no record is built; the program reads the few fields
// it needs from the socket (args: struct sock *sk, int oldstate, int newstate).
SEC("tp_btf/inet_sock_set_state")
int inet_sock_set_state_btf(__u64 *ctx) {
    const struct sock *sk = (const struct sock *)ctx[0];
    if (sk->sk_protocol != IPPROTO_TCP)
        return 0;
    return set_state(ctx, 1, (__u64)sk, (int)ctx[1], (int)ctx[2]);
}

INLINE void error_report(struct error_report_args *ctx) {
    if (ctx->protocol != IPPROTO_TCP || ctx->error == 0)
        return;
    count_event();
    struct tuple t = {};
    t.sport = ctx->sport;
    t.dport = ctx->dport;
    copy16(t.saddr, ctx->saddr_v6);
    copy16(t.daddr, ctx->daddr_v6);
    __u64 *skp = bpf_map_lookup_elem(&by_tuple, &t);
    if (!skp)
        return;
    __u64 sk = *skp;
    struct failed *w = bpf_map_lookup_elem(&failed, &sk);
    if (w)
        finish_failed(sk, w, ctx->error);
    else
        bpf_map_delete_elem(&by_tuple, &t);
}

SEC("tracepoint/sock/inet_sk_error_report")
int inet_sk_error_report(struct error_report_args *ctx) {
    error_report(ctx);
    return PASS_ON;
}

// A new connect() on this thread: forget a socket left from a SYN_SENT outside connect()
// (TCP Fast Open's sendmsg) or from an earlier call, so its exit is not paired with it.
// A lookup and a store: the entry stays for the thread's next call.
INLINE void enter_connect(void) {
    count_event();
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    struct call *call = bpf_map_lookup_elem(&calls, &tid);
    if (call && call->sk)
        call->sk = 0;
}

INLINE void exit_connect(struct sys_exit_args *ctx) {
    count_event();
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    __u32 tid = (__u32)pid_tgid;
    long ret = ctx->ret;
    struct call *cp = bpf_map_lookup_elem(&calls, &tid);
    __u64 sk = 0;
    if (cp) {
        sk = cp->sk;
        cp->sk = 0;
    }
    if (ret >= 0 || ret == -EINPROGRESS)
        return;
    __s32 err = (__s32)-ret;
    if (sk) {
        struct failed *w = bpf_map_lookup_elem(&failed, &sk);
        if (w) {
            finish_failed(sk, w, err);
            return;
        }
        // connect() gave up on a socket still connecting with no state change seen (a
        // blocking connect's timeout or refusal). Interrupted calls keep connecting.
        if (err == EINTR || err == EALREADY || err == EAGAIN || err == ERESTARTSYS)
            return;
        struct sock_entry *e = sock_find(sk);
        if (!e || e->s.phase != PHASE_CONNECTING)
            return;
        __u32 slot = e->s.slot;
        if (!sock_forget(e, sk))
            return;
        struct flow *f = counters_of(slot);
        if (f)
            fail(f, slot, err, bpf_ktime_get_ns());
        return;
    }
    // No TCP socket changed state in this call: a routing failure before a port was chosen
    // (ENETUNREACH), or not a TCP socket. No destination.
    if (cfg.dport || cfg.match_daddr || !task_selected((__u32)(pid_tgid >> 32)))
        return;
    struct socketless_key k = {};
    k.tgid = pid_tgid >> 32;
    k.err = err;
    count_in(&socketless, &k);
}

SEC("tracepoint/syscalls/sys_enter_connect")
int sys_enter_connect(void *ctx) {
    enter_connect();
    return PASS_ON;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int sys_exit_connect(struct sys_exit_args *ctx) {
    exit_connect(ctx);
    return PASS_ON;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
