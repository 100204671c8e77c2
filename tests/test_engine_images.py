"""Runtime images against the real Docker engine.

The first run builds the images of every recipe (several minutes: debootstrap
and apt download from the Debian mirror); later runs find them in Docker and
take milliseconds.
"""

from __future__ import annotations

import dataclasses
import shutil
import time

import pytest

from imagekit import RUNTIMES_DIR, built_images, catalog, docker_client, runtime_images  # noqa: F401  (fixtures)
from server.engine import RuntimeImageError, RuntimeImages
from server.engine.images import RECIPE_HASH_LABEL


@pytest.mark.parametrize("runtime_id", ["python-3.11", "node-18.0"])
def test_image_is_built_from_its_recipe_and_cached(runtime_images, catalog, built_images, docker_client, runtime_id):
    runtime = catalog[runtime_id]
    image = docker_client.images.get(runtime.image)
    assert image.id == built_images[runtime_id]
    assert image.labels[RECIPE_HASH_LABEL] == runtime_images.recipe(runtime).digest
    assert runtime_images.available(runtime)

    started = time.monotonic()
    assert runtime_images.ensure(runtime) == image.id
    assert time.monotonic() - started < 1.0, "a second ensure must be a cache hit"


@pytest.mark.parametrize(
    "runtime_id, command, expected",
    [
        # The full stdlib (json, http) and pip are there, not python3-minimal.
        ("python-3.11", ["python3", "-c", "import json, http.server, pip; print('ok')"], "ok"),
        ("node-18.0", ["sh", "-c", "node --version && npm --version"], "v18."),
    ],
)
def test_image_runs_its_interpreter_as_an_unprivileged_user(docker_client, catalog, built_images, runtime_id, command, expected):
    output = docker_client.containers.run(
        built_images[runtime_id], command, user="10001:10001", read_only=True,
        network_mode="none", remove=True,
    )
    assert expected in output.decode()


def test_absent_images_are_not_available(runtime_images, catalog):
    python = catalog["python-3.11"]
    for image in ("functions-runtime/absent:0", "127.0.0.1:1/absent:0"):
        assert not runtime_images.available(dataclasses.replace(python, id=f"absent-{image}", image=image))


def test_image_from_an_older_recipe_is_not_available(docker_client, catalog, built_images, tmp_path):
    """An edited recipe makes the existing image stale (ensure would rebuild it)."""
    runtime = catalog["python-3.11"]
    shutil.copytree(RUNTIMES_DIR / "base", tmp_path / "base")
    recipe_dir = tmp_path / runtime.recipe
    recipe_dir.mkdir()
    recipe = (RUNTIMES_DIR / runtime.recipe / "recipe.toml").read_text()
    (recipe_dir / "recipe.toml").write_text(recipe)
    assert RuntimeImages(docker_client, tmp_path).available(runtime)  # the same recipe: current
    (recipe_dir / "recipe.toml").write_text(recipe + "\n# edited\n")
    assert not RuntimeImages(docker_client, tmp_path).available(runtime)
    # An edited base makes every layer over it stale too.
    (recipe_dir / "recipe.toml").write_text(recipe)
    with open(tmp_path / "base" / "bookworm" / "recipe.toml", "a") as base:
        base.write("\n# edited\n")
    assert not RuntimeImages(docker_client, tmp_path).available(runtime)


def test_override_image_present_locally_is_used_as_is(runtime_images, docker_client, catalog, built_images):
    python = catalog["python-3.11"]
    override = dataclasses.replace(python, id="python-override", image="local-override/python:test")
    docker_client.images.get(built_images["python-3.11"]).tag("local-override/python", "test")
    try:
        assert runtime_images.available(override)
        assert runtime_images.ensure(override) == built_images["python-3.11"]
    finally:
        docker_client.images.remove("local-override/python:test")


def test_override_image_that_cannot_be_pulled_fails_clearly(runtime_images, catalog):
    # A registry on a closed loopback port: the pull fails at once, without leaving the machine.
    override = dataclasses.replace(catalog["python-3.11"], id="python-unpullable", image="127.0.0.1:1/nothing:0")
    with pytest.raises(RuntimeImageError, match=r"127\.0\.0\.1:1/nothing:0 .*could not be pulled"):
        runtime_images.ensure(override)
    results = runtime_images.ensure_all([override])
    assert isinstance(results["python-unpullable"], RuntimeImageError)


def test_own_image_without_recipe_fails_clearly(docker_client, catalog, tmp_path):
    images = RuntimeImages(docker_client, tmp_path)  # no recipes here
    with pytest.raises(RuntimeImageError, match="has no recipe"):
        images.ensure(dataclasses.replace(catalog["python-3.11"], image="functions-runtime/absent:0"))


def test_failed_image_build_reports_the_cause_and_cleans_up(docker_client, catalog, tmp_path):
    # A mirror on a closed loopback port: debootstrap fails at once, offline.
    recipes = tmp_path / "runtimes"
    (recipes / "broken").mkdir(parents=True)
    (recipes / "broken" / "recipe.toml").write_text('suite = "bookworm"\nmirror = "http://127.0.0.1:1/debian"\npackages = ["python3"]\n')
    work = tmp_path / "work"
    images = RuntimeImages(docker_client, recipes, work_dir=work)
    runtime = dataclasses.replace(catalog["python-3.11"], id="broken", image="functions-runtime/broken:0", recipe="broken")
    lines = []
    with pytest.raises(RuntimeImageError, match=r"debootstrap failed .*\n(.*\n)*E: Failed getting release file"):
        images.ensure(runtime, progress=lines.append)
    assert any(line.startswith("[broken] ") and "Retrieving" in line for line in lines), lines
    assert not list(work.glob("**/root-*")), "the temporary root filesystem must be removed"
    assert not images.available(runtime)


def test_recipe_with_unknown_keys_is_rejected(docker_client, catalog, tmp_path):
    (tmp_path / "typo").mkdir()
    (tmp_path / "typo" / "recipe.toml").write_text('suite = "bookworm"\npackages = ["python3"]\npackage = ["x"]\n')
    runtime = dataclasses.replace(catalog["python-3.11"], recipe="typo")
    with pytest.raises(RuntimeImageError, match="unknown keys package"):
        RuntimeImages(docker_client, tmp_path).recipe(runtime)


def test_images_of_a_suite_share_its_base_layer(docker_client, catalog, built_images):
    """Every runtime is one layer over its suite's base: Docker stores the base once."""
    by_suite: dict[str, list[list[str]]] = {}
    for runtime_id, image_id in built_images.items():
        suite = catalog[runtime_id].base.split()[0]  # "debian:bookworm"
        by_suite.setdefault(suite, []).append(docker_client.images.get(image_id).attrs["RootFS"]["Layers"])
    assert set(by_suite) == {"debian:bookworm", "debian:trixie"}
    for suite, layer_lists in by_suite.items():
        assert len({layers[0] for layers in layer_lists}) == 1, suite  # one base
        assert all(len(layers) == 2 for layers in layer_lists), suite  # plus the runtime's own layer
        assert len({layers[1] for layers in layer_lists}) == len(layer_lists), suite


def test_a_layer_recipe_needs_a_root_base(docker_client, catalog, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "recipe.toml").write_text('base = "b"\npackages = ["x"]\n')
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "recipe.toml").write_text('base = "a"\npackages = ["x"]\n')
    runtime = dataclasses.replace(catalog["python-3.11"], recipe="a")
    with pytest.raises(RuntimeImageError, match="loops"):
        RuntimeImages(docker_client, tmp_path).recipe(runtime)
    (tmp_path / "b" / "recipe.toml").write_text('suite = "bookworm"\nbase = "c"\npackages = ["x"]\n')
    with pytest.raises(RuntimeImageError, match="exactly one of `suite`"):
        RuntimeImages(docker_client, tmp_path).recipe(runtime)
