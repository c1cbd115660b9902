"""msm-cni: the chained CNI plugin that redirects an injected pod's RTSP to its stub."""
