"""msm: the ``msm`` command, composing the mesh's components."""

import os

# gRPC's C core prints its own error lines (e.g. for a busy port) to stderr;
# msm reports those failures itself, in one line. GRPC_VERBOSITY=debug still works.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
