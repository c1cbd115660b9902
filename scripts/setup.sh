#!/usr/bin/env bash
# Install what msm needs on Debian 12, idempotently: system packages with
# apt-get (only those missing), then a virtual environment in .venv with the
# project and its test tools from PyPI. Safe to run again and again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-gi            # venv; Debian's python has GStreamer's gi bindings
  ffmpeg                                     # ffprobe/ffmpeg/ffplay as real viewers
  gstreamer1.0-tools gir1.2-gst-rtsp-server-1.0 gir1.2-gstreamer-1.0
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly                  # x264enc for the demo source
  gstreamer1.0-libav                         # avdec_h264 for rtspsrc viewers in the tests
  iproute2 nftables
  tshark                                     # independent RTP jitter/loss reference in the accuracy tests
  containernetworking-plugins openssl        # real CNI plugins (bridge, host-local) and test certificates
  libsrtp2-dev                               # SRTP (RFC 3711) in the native engine (node-to-node legs)
  glib-networking                            # TLS for GStreamer's rtspsrc in the RTSPS tests
  chromium fonts-liberation                  # headless browser test of the live page
  dpdk-dev librte-net-memif23                # dpdk-testpmd's memif driver: the independent memif peer
  libfabric1 libfabric-dev libfabric-bin     # node-to-node frame transport (tcp;ofi_rxm, shm); fi_pingpong
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Optional: msm-cni's "redirectMode": "ebpf" compiles with BCC (python3-bpfcc),
# which needs kernel headers under /lib/modules/$(uname -r). A kernel without a
# headers package (a custom build) gets links to Debian's newest instead: the
# cgroup programs use only the stable UAPI. Best effort, never fatal.
kernel_headers_ok() {  # where BCC looks, by its rules
  local kdir="/lib/modules/$(uname -r)"
  [ -e "$kdir/source/include/linux/kconfig.h" ] || [ -e "$kdir/build/include/linux/kconfig.h" ]
}
setup_ebpf() {
  local kdir="/lib/modules/$(uname -r)" arch pkgs=(python3-bpfcc bpftool) want=() pkg hdr
  arch=$(dpkg --print-architecture)
  kernel_headers_ok || pkgs+=("linux-headers-$arch")
  for pkg in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || want+=("$pkg")
  done
  if [ ${#want[@]} -gt 0 ]; then
    echo "setup: installing ${want[*]} (eBPF redirect mode)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null || return 1
  fi
  kernel_headers_ok && return 0
  hdr=$(ls -d /usr/src/linux-headers-*-"$arch" 2>/dev/null | sort -V | tail -n 1)
  [ -n "$hdr" ] && [ -d "${hdr%-"$arch"}-common" ] || return 1
  mkdir -p "$kdir" && ln -sfn "$hdr" "$kdir/build" && ln -sfn "${hdr%-"$arch"}-common" "$kdir/source" || return 1
  echo "setup: no headers for $(uname -r); linked $kdir/build and source to $hdr" >&2
}
if [ "$(id -u)" -eq 0 ]; then
  setup_ebpf || echo "setup: eBPF redirect mode prerequisites not set up (optional; continuing)" >&2
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.msm-installed
# Reinstall (which also rebuilds the C engine) when the packaging or C sources changed.
changed=0
for f in pyproject.toml setup.py ext/*.c ext/*.h ext/build*.py bench/pyproject.toml bench/setup.py \
         bench/build_blast.py bench/msm_bench/*.c bench/msm_bench/*.h; do
  [ -f "$f" ] && [ "$f" -nt "$stamp" ] && changed=1
done
if [ ! -f "$stamp" ] || [ "$changed" = 1 ]; then
  echo "setup: installing Python packages into .venv" >&2
  log=.venv/pip-install.log
  if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e ./bench -e '.[test,bench]'; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "setup: pip install failed (full log: $log)" >&2
    exit 1
  fi
  touch "$stamp"
fi
