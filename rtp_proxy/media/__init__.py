"""The proxy's media-transport side: frames rather than RTSP-negotiated RTP.

Multipoint groups (one sender, any number of receivers, named by URN), the
apps' memif connections on this node, libfabric links to other nodes' proxies,
and ST 2110 bridges to and from the network. Wire formats and the app-facing
SDK live in :mod:`msm.sdk`; the C cores in :mod:`msm.ext`.
"""
