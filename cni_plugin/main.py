"""``msm-cni``: the process a container runtime runs, and the installer's entry.

As a plugin (``CNI_COMMAND`` set): the network config on stdin, CNI_* in the
environment, the result JSON on stdout and exit status 0, or the CNI error JSON
``{"cniVersion", "code", "msg", "details"}`` on stdout and exit status 1. This
module is the one boundary where an error becomes that JSON, by
``errors.error_json``.

As the installer: ``msm-cni install ...`` / ``msm-cni uninstall ...`` (see
``msm.cni_plugin.installer``).

Runtimes start a plugin for every pod, so this module imports only what every
command needs; HTTP, TLS, YAML and BCC are imported by the code that uses them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

from msm.sdk.errors import MsmError

from . import config as cfg
from .errors import IoFailure, error_json
from .plugin import Plugin


def _read_stdin(stream: IO[bytes]) -> bytes:
    try:
        return stream.read(cfg.MAX_STDIN_BYTES + 1)
    except OSError as exc:
        raise IoFailure("cannot read the network config from stdin", str(exc)) from exc


def run_plugin(environ: Mapping[str, str], stdin: IO[bytes], stdout: IO[str], plugin: Plugin | None = None) -> int:
    """One CNI invocation; returns the exit status."""
    version = cfg.FALLBACK_VERSION
    try:
        env = cfg.parse_env(environ)
        data = _read_stdin(stdin)
        decoded: dict[str, Any] | None = None
        if data.strip() or env.command != "VERSION":
            decoded = cfg.decode_json(data)
            asked = decoded.get("cniVersion")
            if isinstance(asked, str) and asked in cfg.SUPPORTED_VERSIONS:
                version = asked
        result = (plugin or Plugin.default()).run(env, decoded)
    except Exception as exc:  # the runtime gets CNI JSON, never a traceback on stdout
        if not isinstance(exc, MsmError):  # a bug: its traceback goes to stderr, for the node's logs
            import traceback

            traceback.print_exc(file=sys.stderr)
        answer = error_json(exc, version)
        print(f"msm-cni: {environ.get('CNI_COMMAND', '?')} failed: {answer['msg']}: {answer['details']}",
              file=sys.stderr)
        stdout.write(json.dumps(answer) + "\n")
        return 1
    if result is not None:
        stdout.write(json.dumps(result) + "\n")
    return 0


USAGE = """\
msm-cni: the msm chained CNI plugin (CNI spec {versions}).

Run by a container runtime with CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS,
CNI_IFNAME, CNI_ARGS and CNI_PATH in the environment and the network config
on stdin; or:

  msm-cni install --cni-bin-dir DIR --cni-conf-dir DIR [...]   (see msm-cni install --help)
  msm-cni uninstall --cni-bin-dir DIR --cni-conf-dir DIR [...]
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("install", "uninstall"):
        from .installer import main as installer_main

        return installer_main(args)
    if "CNI_COMMAND" not in os.environ and (args or sys.stdin.isatty()):
        print(USAGE.format(versions=", ".join(cfg.SUPPORTED_VERSIONS)), file=sys.stderr, end="")
        return 0 if args and args[0] in ("-h", "--help") else 2
    return run_plugin(os.environ, sys.stdin.buffer, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
