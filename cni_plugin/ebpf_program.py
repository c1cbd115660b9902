"""The C source of msm-cni's eBPF programs (compiled by BCC at the first eBPF ADD).

Kept apart from ``msm.cni_plugin.ebpf``, which fills in ``@PINS@`` (the pin
directory), ``@MAX_REDIRECTS@`` and ``@MAX_PENDING@`` (the map sizes) and loads
it; the docstring there says what each program does.
"""

PROGRAM = r"""
#include <uapi/linux/bpf.h>
#include <linux/in.h>

#define MSM_SOL_IP 0
#define MSM_SO_ORIGINAL_DST 80
#define MSM_LOOPBACK 0x7f000001

struct redirect_key { u64 netns; u32 port; u32 pad; };   /* port in host order */
struct redirect_val { u32 to_port; u32 proxy_uid; };
struct orig_dst { u32 ip4; u32 port; };                  /* both in network order */
struct peer_key { u64 netns; u32 ip4; u32 port; };       /* ip network, port host order */

BPF_TABLE_PINNED("hash", struct redirect_key, struct redirect_val, redirect, @MAX_REDIRECTS@,
                 "@PINS@/redirect");
BPF_TABLE_PINNED("lru_hash", u64, struct orig_dst, by_socket, @MAX_PENDING@, "@PINS@/by_socket");
BPF_TABLE_PINNED("lru_hash", struct peer_key, struct orig_dst, by_peer, @MAX_PENDING@, "@PINS@/by_peer");

int msm_connect4(struct bpf_sock_addr *ctx) {
    if (ctx->protocol != IPPROTO_TCP)
        return 1;
    u32 dst = ctx->user_ip4;
    if ((bpf_ntohl(dst) >> 24) == 127)
        return 1;
    struct redirect_key key = {};
    key.netns = bpf_get_netns_cookie(ctx);
    key.port = bpf_ntohs((u16)ctx->user_port);
    struct redirect_val *how = redirect.lookup(&key);
    if (!how)
        return 1;
    if ((u32)bpf_get_current_uid_gid() == how->proxy_uid)
        return 1;
    struct orig_dst orig = {};
    orig.ip4 = dst;
    orig.port = (u16)ctx->user_port;
    u64 cookie = bpf_get_socket_cookie(ctx);
    by_socket.update(&cookie, &orig);
    ctx->user_ip4 = bpf_htonl(MSM_LOOPBACK);
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
    key.ip4 = skops->local_ip4;
    key.port = skops->local_port;
    by_peer.update(&key, &copy);
    by_socket.delete(&cookie);
    return 1;
}

int msm_getsockopt(struct bpf_sockopt *ctx) {
    if (ctx->level != MSM_SOL_IP || ctx->optname != MSM_SO_ORIGINAL_DST)
        return 1;
    struct bpf_sock *sk = ctx->sk;
    if (!sk || sk->family != AF_INET)
        return 1;
    struct peer_key key = {};
    key.netns = bpf_get_netns_cookie(ctx);
    key.ip4 = sk->dst_ip4;
    key.port = bpf_ntohs((u16)sk->dst_port);
    struct orig_dst *orig = by_peer.lookup(&key);
    if (!orig)
        return 1;
    struct sockaddr_in *out = ctx->optval;
    if ((void *)(out + 1) > ctx->optval_end)
        return 1;
    out->sin_family = AF_INET;
    out->sin_port = (u16)orig->port;
    out->sin_addr.s_addr = orig->ip4;
    __builtin_memset(out->sin_zero, 0, sizeof(out->sin_zero));
    ctx->optlen = sizeof(*out);
    /* optlen and retval are separate 32-bit context fields: keep clang from
       merging the two stores into one 64-bit store the verifier rejects. */
    asm volatile("" ::: "memory");
    ctx->retval = 0;
    return 1;
}
"""
