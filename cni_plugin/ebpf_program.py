"""The C source of msm-cni's eBPF programs (compiled by BCC at the first eBPF ADD).

Kept apart from ``msm.cni_plugin.ebpf``, which fills in ``@PINS@`` (the pin
directory), ``@MAX_REDIRECTS@`` and ``@MAX_PENDING@`` (the map sizes) and loads
it; the docstring there says what each program does.

Addresses in the pending maps are IPv6, an IPv4 one written as ``::ffff:a.b.c.d``,
so one map serves both families and a connection made from an IPv6 socket to an
IPv4-mapped address finds its entry from either end. ``MAP_SIZES`` are the
(key, value) sizes of the maps below: ADD unpins a pending map an older version
pinned with another layout rather than load programs that disagree with it.
"""

#: (key size, value size) of each pinned map, as the structs below lay them out.
MAP_SIZES = {"redirect": (16, 8), "by_socket": (8, 24), "by_peer": (32, 24)}

PROGRAM = r"""
#include <uapi/linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>

#define MSM_SOL_IP 0
#define MSM_SOL_IPV6 41
#define MSM_SO_ORIGINAL_DST 80   /* IP6T_SO_ORIGINAL_DST has the same value */
#define MSM_LOOPBACK 0x7f000001
/* A context field read that happens where it is written, unconditionally: reads
   made inside the IPv4 and IPv6 branches get merged by clang into one load
   through a selected pointer, which the verifier rejects (modified ctx pointer,
   pointer arithmetic on a sock). So every field is read first, then chosen. */
#define MSM_READ(field) (*(volatile u32 *)&(field))

struct redirect_key { u64 netns; u32 port; u32 pad; };   /* port in host order */
struct redirect_val { u32 to_port; u32 proxy_uid; };
struct orig_dst { u32 ip6[4]; u32 port; u32 pad; };      /* address and port in network order */
struct peer_key { u64 netns; u32 ip6[4]; u32 port; u32 pad; };  /* address network, port host order */

BPF_TABLE_PINNED("hash", struct redirect_key, struct redirect_val, redirect, @MAX_REDIRECTS@,
                 "@PINS@/redirect");
BPF_TABLE_PINNED("lru_hash", u64, struct orig_dst, by_socket, @MAX_PENDING@, "@PINS@/by_socket");
BPF_TABLE_PINNED("lru_hash", struct peer_key, struct orig_dst, by_peer, @MAX_PENDING@, "@PINS@/by_peer");

/* Is ip6 (network order) ::ffff:a.b.c.d? */
static __always_inline int msm_mapped(const u32 *ip6) {
    return !ip6[0] && !ip6[1] && ip6[2] == bpf_htonl(0xffff);
}

/* A socket's address as the pending maps hold it, chosen from its IPv4 and IPv6
   fields, all read already (MSM_READ in the call's arguments). */
static __always_inline void msm_peer_addr(u32 *out, u32 family, u32 ip4, u32 a0, u32 a1, u32 a2, u32 a3) {
    if (family == AF_INET6) {
        out[0] = a0;
        out[1] = a1;
        out[2] = a2;
        out[3] = a3;
    } else {
        out[0] = 0;
        out[1] = 0;
        out[2] = bpf_htonl(0xffff);
        out[3] = ip4;
    }
}

/* The redirect for a connect() to user_port (network order) in this netns, unless the
   caller is the stub itself; NULL for a connection to leave alone. */
static __always_inline struct redirect_val *msm_redirect(u64 netns, u32 user_port) {
    struct redirect_key key = {};
    key.netns = netns;
    key.port = bpf_ntohs((u16)user_port);
    struct redirect_val *how = redirect.lookup(&key);
    if (!how || (u32)bpf_get_current_uid_gid() == how->proxy_uid)
        return 0;
    return how;
}

int msm_connect4(struct bpf_sock_addr *ctx) {
    if (ctx->protocol != IPPROTO_TCP)
        return 1;
    u32 dst = ctx->user_ip4;
    if ((bpf_ntohl(dst) >> 24) == 127)
        return 1;
    struct redirect_val *how = msm_redirect(bpf_get_netns_cookie(ctx), ctx->user_port);
    if (!how)
        return 1;
    struct orig_dst orig = {};
    orig.ip6[2] = bpf_htonl(0xffff);
    orig.ip6[3] = dst;
    orig.port = (u16)ctx->user_port;
    u64 cookie = bpf_get_socket_cookie(ctx);
    by_socket.update(&cookie, &orig);
    ctx->user_ip4 = bpf_htonl(MSM_LOOPBACK);
    ctx->user_port = bpf_htons((u16)how->to_port);
    return 1;
}

/* An IPv6 socket's connect(): to ::1, or to ::ffff:127.0.0.1 (the stub's IPv4
   listener) when the destination is an IPv4-mapped address. */
int msm_connect6(struct bpf_sock_addr *ctx) {
    if (ctx->protocol != IPPROTO_TCP)
        return 1;
    struct orig_dst orig = {};
    orig.ip6[0] = ctx->user_ip6[0];
    orig.ip6[1] = ctx->user_ip6[1];
    orig.ip6[2] = ctx->user_ip6[2];
    orig.ip6[3] = ctx->user_ip6[3];
    int mapped = msm_mapped(orig.ip6);
    if (mapped && (bpf_ntohl(orig.ip6[3]) >> 24) == 127)
        return 1;
    if (!orig.ip6[0] && !orig.ip6[1] && !orig.ip6[2] && orig.ip6[3] == bpf_htonl(1))
        return 1;
    struct redirect_val *how = msm_redirect(bpf_get_netns_cookie(ctx), ctx->user_port);
    if (!how)
        return 1;
    orig.port = (u16)ctx->user_port;
    u64 cookie = bpf_get_socket_cookie(ctx);
    by_socket.update(&cookie, &orig);
    ctx->user_ip6[0] = 0;
    ctx->user_ip6[1] = 0;
    ctx->user_ip6[2] = mapped ? bpf_htonl(0xffff) : 0;
    ctx->user_ip6[3] = bpf_htonl(mapped ? MSM_LOOPBACK : 1);
    ctx->user_port = bpf_htons((u16)how->to_port);
    return 1;
}

int msm_sockops(struct bpf_sock_ops *skops) {
    if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
        return 1;
    u64 cookie = bpf_get_socket_cookie(skops);
    struct orig_dst *orig = by_socket.lookup(&cookie);
    if (!orig)
        return 1;
    struct orig_dst copy = *orig;
    struct peer_key key = {};
    key.netns = bpf_get_netns_cookie(skops);
    msm_peer_addr(key.ip6, skops->family, MSM_READ(skops->local_ip4), MSM_READ(skops->local_ip6[0]),
                  MSM_READ(skops->local_ip6[1]), MSM_READ(skops->local_ip6[2]), MSM_READ(skops->local_ip6[3]));
    key.port = skops->local_port;
    by_peer.update(&key, &copy);
    by_socket.delete(&cookie);
    return 1;
}

/* SO_ORIGINAL_DST as sockaddr_in (SOL_IP; IPv4 destinations only) or
   IP6T_SO_ORIGINAL_DST as sockaddr_in6 (SOL_IPV6), as netfilter answers them. */
int msm_getsockopt(struct bpf_sockopt *ctx) {
    if (ctx->optname != MSM_SO_ORIGINAL_DST || (ctx->level != MSM_SOL_IP && ctx->level != MSM_SOL_IPV6))
        return 1;
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
    struct peer_key key = {};
    key.netns = bpf_get_netns_cookie(ctx);
    u32 family = sk->family;
    if (family != AF_INET && family != AF_INET6)
        return 1;
    msm_peer_addr(key.ip6, family, MSM_READ(sk->dst_ip4), MSM_READ(sk->dst_ip6[0]), MSM_READ(sk->dst_ip6[1]),
                  MSM_READ(sk->dst_ip6[2]), MSM_READ(sk->dst_ip6[3]));
    key.port = bpf_ntohs((u16)sk->dst_port);
    struct orig_dst *orig = by_peer.lookup(&key);
    if (!orig)
        return 1;
    if (ctx->level == MSM_SOL_IP) {
        struct sockaddr_in *out = ctx->optval;
        if ((void *)(out + 1) > ctx->optval_end || !msm_mapped(orig->ip6))
            return 1;
        out->sin_family = AF_INET;
        out->sin_port = (u16)orig->port;
        out->sin_addr.s_addr = orig->ip6[3];
        __builtin_memset(out->sin_zero, 0, sizeof(out->sin_zero));
        ctx->optlen = sizeof(*out);
    } else {
        struct sockaddr_in6 *out = ctx->optval;
        if ((void *)(out + 1) > ctx->optval_end)
            return 1;
        out->sin6_family = AF_INET6;
        out->sin6_port = (u16)orig->port;
        out->sin6_flowinfo = 0;
        out->sin6_addr.in6_u.u6_addr32[0] = orig->ip6[0];
        out->sin6_addr.in6_u.u6_addr32[1] = orig->ip6[1];
        out->sin6_addr.in6_u.u6_addr32[2] = orig->ip6[2];
        out->sin6_addr.in6_u.u6_addr32[3] = orig->ip6[3];
        out->sin6_scope_id = 0;
        ctx->optlen = sizeof(*out);
    }
    /* optlen and retval are separate 32-bit context fields: keep clang from
       merging the two stores into one 64-bit store the verifier rejects. */
    asm volatile("" ::: "memory");
    ctx->retval = 0;
    return 1;
}
"""
