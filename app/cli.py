"""The ``kvwall`` command: the desktop app by default, ``plan`` and ``status`` headless.

This module and the headless commands never import Qt; only the GUI path does, so
``kvwall plan`` and ``kvwall status --json`` start fast.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """\
usage: kvwall [--demo] [--version]
       kvwall plan MODEL.gguf [llama-server flags...] [--memory SIZE] [--gpus NAMES]
                   [--what-if-cache TYPE]... [--json]
       kvwall plan --cmd "llama-server -m MODEL.gguf ..." [--memory SIZE] [--json]
       kvwall status [--json] [--watch SECONDS] [--url URL]... [--api-key-file URL=PATH]...
                     [--api-key URL=KEY]... [--deadline SECONDS] [--remote URL]...
                     [--remote-token-file PATH]
       kvwall exporter [--listen HOST:PORT] [--token-file PATH] [--interval SECONDS]
                       [--url URL]... [--api-key-file URL=PATH]... [--api-key URL=KEY]...

Keep local LLM agents from crashing into the memory wall.

commands:
  (none)    start the tray app (a window where no tray exists);
            --demo also starts a tiny real llama-server and a scripted agent
  plan      predict what llama-server allocates for a model and command line,
            with a what-if table of cache types and slot counts
  status    find running llama.cpp servers, attribute their memory, forecast
            when each slot fills, and advise; --remote reads another machine's exporter
  exporter  serve Prometheus metrics (/metrics) and the status object (/status.json)
            from one shared poll loop; loopback unless --listen says otherwise

Run `kvwall COMMAND --help` for a command's options.
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "plan":
        from kvwall.app.headless.plan import main as plan_main

        return plan_main(args[1:])
    if args and args[0] == "status":
        from kvwall.app.headless.status import main as status_main

        return status_main(args[1:])
    if args and args[0] == "exporter":
        from kvwall.app.headless.exporter import main as exporter_main

        return exporter_main(args[1:])
    if args and args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0
    if args and args[0] == "--version":
        from importlib.metadata import version

        print(f"kvwall {version('kvwall')}")
        return 0
    from kvwall.app.desktop.gui import main as gui_main

    return gui_main(args)


if __name__ == "__main__":
    sys.exit(main())
