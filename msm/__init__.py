"""msm, the media streaming mesh: one import package for every component.

The repository keeps one folder per component; installed, they are the
subpackages of ``msm`` (``msm.sdk`` is ``sdk/``, ``msm.stub`` is ``stub/``, and so
on; see ``docs/architecture.md``). The modules directly in this package
(``msm.cli``, ``msm.mesh``, ``msm.bench``) are the ``msm`` command, which
composes the components; no component imports them.
"""

import os

# gRPC's C core prints its own error lines (e.g. for a busy port) to stderr;
# msm reports those failures itself, in one line. GRPC_VERBOSITY=debug still works.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
