import os
import sys

# glibc's per-thread malloc arenas fragment under streamed uploads (~1 MiB
# pieces from many threads): two arenas keep the server's memory flat. The
# variable is read at process start, so set it and start again once.
if "MALLOC_ARENA_MAX" not in os.environ:
    os.environ["MALLOC_ARENA_MAX"] = "2"
    os.execv(sys.executable, [sys.executable, "-m", "server", *sys.argv[1:]])

from server.cli import main  # noqa: E402

sys.exit(main())
