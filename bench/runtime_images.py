"""What the runtime images cost: build time and disk.

    .venv/bin/python bench/runtime_images.py            # sizes of the images present
    .venv/bin/python bench/runtime_images.py --rebuild  # remove ours, build every recipe (as root), time it

Disk: each image's own layer, the shared bases, the total Docker stores
(unique layers) against what it would be if every image had its own root.
--rebuild removes every `functions-runtime/*` image and the kept base
directories first, then builds all recipes `PARALLEL_BUILDS` at a time, as
the service does at start-up; it prints the wall time and each image's.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.domain.runtimes import load_catalog  # noqa: E402
from server.engine import RuntimeImages  # noqa: E402
from server.engine.images import OWN_IMAGE_PREFIX, PARALLEL_BUILDS  # noqa: E402
from server.settings import REPO_ROOT  # noqa: E402

RUNTIMES = [r for r in load_catalog(REPO_ROOT / "runtimes" / "catalog.toml") if r.recipe]


def sizes(client: docker.DockerClient) -> None:
    bases: dict[str, int] = {}
    own_total = unshared = 0
    print(f"{'runtime':12} {'image':>9} {'own layer':>10}")
    for runtime in RUNTIMES:
        image = client.images.get(runtime.image)
        base_id = image.attrs["RootFS"]["Layers"][0]
        base = next(i for i in client.images.list(name="functions-runtime/base")
                    if i.attrs["RootFS"]["Layers"] == [base_id])
        bases[base.tags[0]] = base.attrs["Size"]
        own = image.attrs["Size"] - base.attrs["Size"]
        own_total += own
        unshared += image.attrs["Size"]
        print(f"{runtime.id:12} {image.attrs['Size'] / 1e6:7.0f} MB {own / 1e6:7.0f} MB")
    for tag, size in sorted(bases.items()):
        print(f"{tag}: {size / 1e6:.0f} MB, shared")
    print(f"stored: {(own_total + sum(bases.values())) / 1e6:.0f} MB for {len(RUNTIMES)} runtimes "
          f"(each with its own root: {unshared / 1e6:.0f} MB)")


def rebuild(client: docker.DockerClient) -> None:
    for image in client.images.list():
        if any(tag.startswith(OWN_IMAGE_PREFIX) for tag in image.tags):
            for tag in image.tags:
                client.images.remove(tag, force=True)
    work = Path(tempfile.mkdtemp(prefix="bench-images-"))
    times: dict[str, float] = {}

    def progress(line: str) -> None:
        found = re.match(r"\[(\S+)\] built \S+: .* in ([\d.]+) s$", line)
        if found:
            times[found.group(1)] = float(found.group(2))
            print(line, flush=True)

    started = time.monotonic()
    try:
        results = RuntimeImages(client, REPO_ROOT / "runtimes", work_dir=work).ensure_all(RUNTIMES, progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wall = time.monotonic() - started
    failed = {k: v for k, v in results.items() if isinstance(v, Exception)}
    print(f"built {len(RUNTIMES) - len(failed)} images in {wall:.0f} s wall ({PARALLEL_BUILDS} at a time)"
          + (f"; failed: {failed}" if failed else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rebuild", action="store_true", help="remove our images and build them all again (root)")
    args = parser.parse_args()
    client = docker.from_env()
    if args.rebuild:
        rebuild(client)
    sizes(client)


if __name__ == "__main__":
    main()
