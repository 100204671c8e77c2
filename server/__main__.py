import os
import sys

# Read at process start, so set them and start again once:
# - glibc's per-thread malloc arenas fragment under streamed uploads (~1 MiB
#   pieces from many threads): two arenas keep the server's memory flat;
# - the service never forks a gRPC process, and gRPC's fork support costs a
#   getpid() system call on hot paths.
_PROCESS_ENV = {"MALLOC_ARENA_MAX": "2", "GRPC_ENABLE_FORK_SUPPORT": "false"}
if any(name not in os.environ for name in _PROCESS_ENV):
    for name, value in _PROCESS_ENV.items():
        os.environ.setdefault(name, value)
    os.execv(sys.executable, [sys.executable, "-m", "server", *sys.argv[1:]])

from server.cli import main  # noqa: E402

sys.exit(main())
